//! One flash chip, several owners: the redb translation layer, the report
//! log and the drop tally each take a region of the same chip (the
//! nRF52840's NVMC is one peripheral). [`SharedFlash`] is a cloneable handle
//! that locks the driver for each operation.

use alloc::sync::Arc;

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use spin::Mutex;

/// A cloneable handle to one [`NorFlash`]; every clone drives the same chip.
/// Each owner must keep to its own region (nothing here checks it).
pub struct SharedFlash<F> {
    inner: Arc<Mutex<F>>,
}

impl<F> Clone for SharedFlash<F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<F> core::fmt::Debug for SharedFlash<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedFlash").finish_non_exhaustive()
    }
}

impl<F> SharedFlash<F> {
    /// Wraps the driver.
    pub fn new(flash: F) -> Self {
        Self {
            inner: Arc::new(Mutex::new(flash)),
        }
    }
}

impl<F: ErrorType> ErrorType for SharedFlash<F> {
    type Error = F::Error;
}

impl<F: ReadNorFlash> ReadNorFlash for SharedFlash<F> {
    const READ_SIZE: usize = F::READ_SIZE;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.lock().read(offset, bytes)
    }

    fn capacity(&self) -> usize {
        self.inner.lock().capacity()
    }
}

impl<F: NorFlash> NorFlash for SharedFlash<F> {
    const WRITE_SIZE: usize = F::WRITE_SIZE;
    const ERASE_SIZE: usize = F::ERASE_SIZE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.inner.lock().erase(from, to)
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.inner.lock().write(offset, bytes)
    }
}
