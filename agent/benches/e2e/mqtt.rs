//! MQTT: Debian's Mosquitto started here, publishers with rumqttc.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::SENSORS;
use crate::agent::{Agent, MQTT_CLIENT, MQTT_INFLIGHT};
use crate::collector::Collector;
use crate::load::{Lines, Span, Throughput, run_writers};

// MQTT: Debian's Mosquitto, publishers with rumqttc.

pub struct Mosquitto {
    pub child: Child,
    pub port: SocketAddr,
    pub log: PathBuf,
}

impl Mosquitto {
    /// Starts `/usr/sbin/mosquitto` on a port of its own (persistence on, as
    /// docs/producers.md configures it); fails the bench when it cannot.
    pub fn start(dir: &Path) -> Self {
        let bin = ferry_tests::producers::mosquitto();
        let port = ferry_tests::reserve_port();
        let broker = dir.join("broker");
        std::fs::create_dir_all(&broker).expect("broker directory");
        let conf = broker.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: a broker started as root would otherwise run
                // as `mosquitto`, which cannot write into this directory.
                "listener {} 127.0.0.1\nuser root\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\npersistence_file mosquitto.db\n\
                 max_queued_messages 0\nmax_inflight_messages {MQTT_INFLIGHT}\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
                 log_type subscribe\n",
                port.port(),
                broker.display()
            ),
        )
        .expect("broker config");
        let log = dir.join("mosquitto.log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("broker log"))
            .spawn()
            .unwrap_or_else(|e| panic!("e2e: FAILED: starting {}: {e}", bin.display()));
        let b = Self { child, port, log };
        let started = Instant::now();
        while TcpStream::connect(port).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "e2e: FAILED: Mosquitto did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    /// Waits until the broker has logged the agent's subscription (QoS 1
    /// messages published before it would not be queued for the agent).
    pub fn wait_subscribed(&self, agent: &Agent) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log
                .lines()
                .any(|l| l.contains(MQTT_CLIENT) && l.contains("bench/#"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        agent.fail("the agent did not subscribe on Mosquitto within 60 s");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One device's sensors per message, QoS 1, as fast as the broker acks.
pub fn mqtt_phase(
    agent: &Agent,
    collector: &Collector,
    broker: &Mosquitto,
    secs: Duration,
    span: Span,
) -> Throughput {
    let port = broker.port;
    run_writers(agent, collector, "MQTT", secs, move |c, deadline, sent| {
        use rumqttc::{Event, Outgoing, Packet, QoS};
        let mut opts =
            rumqttc::MqttOptions::new(format!("bench-pub-{c}"), "127.0.0.1", port.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(100);
        let (client, mut connection) = rumqttc::Client::new(opts, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let events = {
            let (acked, stopping) = (acked.clone(), stopping.clone());
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(_) if stopping.load(Ordering::Relaxed) => break,
                        Err(e) => panic!("e2e: FAILED: MQTT publisher {c}: {e}"),
                    }
                }
            })
        };
        let topic = format!("bench/c{c}");
        let mut lines = Lines::new(c, span);
        let mut published = 0u64;
        let mut payload = Vec::with_capacity(512);
        while Instant::now() < deadline {
            payload.clear();
            lines.push(&mut payload, SENSORS);
            client
                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
                .expect("publish");
            published += 1;
            sent.fetch_add(SENSORS as u64, Ordering::Relaxed);
        }
        // Every message acknowledged by the broker (it then holds it for
        // the agent's persistent session).
        let started = Instant::now();
        while acked.load(Ordering::Relaxed) < published {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "e2e: FAILED: Mosquitto acknowledged {} of {published} messages of publisher {c} in 120 s",
                acked.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        stopping.store(true, Ordering::Relaxed);
        let _ = client.disconnect();
        let _ = events.join();
    })
}
