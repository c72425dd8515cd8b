//! The firmware proper: entry point, main loop, panic handler. The
//! micro:bit board (Cortex-M0) runs this same file (`#[path]`), with its own
//! `uart` and `CORE_HZ`.

use crate::{clock, semihosting, uart};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, heprintln};
use ferry_firmware::drivers::sht4x::{Precision, Sht4x};
use ferry_firmware::drivers::tmp102::Tmp102;
use ferry_firmware::emulated::BootArgs;
use ferry_firmware::link::TX_BUFFER;
use ferry_firmware::node::Node;
use ferry_firmware::sim::{EMULATED_EVERY, SimClock, SimSht4xBus, SimTmp102Bus, Simulated};

/// Reports the retry ring holds while the gateway is away.
const RING: usize = 16;
/// Windows per report: the board has three channels.
const WINDOWS: usize = 3;

/// Everything large lives here, in `.bss`, so the size report shows it.
struct State {
    node: Node<RING, WINDOWS>,
    tx: [u8; TX_BUFFER],
}

#[entry]
fn main() -> ! {
    let mut cmdline_buf = [0u8; 256];
    let cmdline = semihosting::cmdline(&mut cmdline_buf);
    let args = BootArgs::parse(cmdline).unwrap_or_else(|e| {
        heprintln!("ferry: {}", e);
        fail("bad command line")
    });
    if args.flash.is_some() {
        fail(
            "flash= is for the journal image (ferry-mps2-an386-journal); this is the RAM-ring image",
        );
    }
    let boot = args.boot.unwrap_or_else(semihosting::unix_time);

    let cp = cortex_m::Peripherals::take().unwrap_or_else(|| fail("core peripherals taken"));
    let mut uart = uart::Uart0::take();
    clock::start(cp.SYST);

    let sim_clock = SimClock::new(0);
    let mut sht = Sht4x::new(SimSht4xBus::new(&sim_clock), clock::TickDelay);
    sht.set_precision(Precision::Low);
    let mut sht = Simulated::new(&sim_clock, sht);
    let mut tmp = Simulated::new(&sim_clock, Tmp102::new(SimTmp102Bus::new(&sim_clock)));

    // Device time 0 is when the clock started: the sim waveforms and the
    // window grid count from there.
    let node = Node::new(
        0,
        args.device_id.clone(),
        boot,
        args.config,
        args.timers,
        &[&sht, &tmp],
        &EMULATED_EVERY,
    )
    .unwrap_or_else(|e| {
        heprintln!("ferry: config refused: {:?}", e);
        fail("bad config")
    });
    let state = cortex_m::singleton!(: State = State { node, tx: [0; TX_BUFFER] })
        .unwrap_or_else(|| fail("state taken"));
    heprintln!(
        "ferry: device {} boot {} period {} ms window {} ms",
        args.device_id,
        boot,
        args.config.sample_period_ms,
        args.config.window_ms
    );

    loop {
        let now = clock::now_ms();
        while let Some(byte) = uart.read() {
            state.node.handle_rx(now, byte);
        }
        state.node.poll(now, &mut [&mut sht, &mut tmp]);
        while let Some(n) = state.node.poll_transmit(now, &mut state.tx) {
            uart.write_all(&state.tx[..n]);
        }
        if args.exit_after_ms.is_some_and(|t| now >= t) {
            let s = state.node.stats();
            heprintln!(
                "ferry: exit at {} ms: samples {} read_errors {} acked {} resent {} dropped {} bad_frames {}",
                now,
                s.sampler.samples,
                s.sampler.read_errors,
                s.link.acked,
                s.link.resent,
                s.link.dropped,
                s.link.bad_frames
            );
            debug::exit(debug::EXIT_SUCCESS);
        }
        // SysTick wakes us every millisecond.
        cortex_m::asm::wfi();
    }
}

fn fail(why: &str) -> ! {
    heprintln!("ferry: {}", why);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    heprintln!("ferry: panic: {}", info);
    fail("panicked")
}
