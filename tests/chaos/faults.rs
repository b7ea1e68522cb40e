//! The faults and when they strike: the short and full profiles, and the tasks that kill
//! sidecars, switch the receiver's behaviour and restart PostgreSQL while the workload runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::fleet::Fleet;
use crate::receiver::{Mode, Outcome, Receiver};
use crate::workload::Writer;

/// How long and how hard one run is.
pub struct Profile {
    pub name: &'static str,
    /// How long the workload writes while faults strike.
    pub stream: Duration,
    pub writers: u16,
    /// A writer's pause between transactions (randomised by ±50%).
    pub pace: Duration,
    /// From when on how many sidecars run.
    pub fleet: Vec<(Duration, usize)>,
    /// A SIGKILL every so often (uniformly between the two).
    pub kill_every: (Duration, Duration),
    /// The steady receiver's behaviour, phase after phase (then up).
    pub receiver: Vec<(Mode, Duration)>,
    /// When PostgreSQL is stopped (immediately, as in a crash), and for how long.
    pub restarts: Vec<Duration>,
    pub outage: Duration,
    /// The sidecars' retry schedule: longer in all than the receiver is ever down.
    pub retry_schedule: &'static [&'static str],
    /// How long the sidecars may take, once the faults stop, to finish everything.
    pub drain: Duration,
    /// How soon after PostgreSQL is back a new change must reach the receiver.
    pub resume_limit: Duration,
}

const fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

impl Profile {
    /// `CHAOS=full` for the long run; anything else the short one CI runs.
    pub fn from_env() -> Profile {
        match std::env::var("CHAOS").as_deref() {
            Ok("full") => Profile::full(),
            _ => Profile::short(),
        }
    }

    pub fn short() -> Profile {
        use Outcome::*;
        Profile {
            name: "short",
            stream: s(80),
            writers: 3,
            pace: Duration::from_millis(150),
            fleet: vec![(s(0), 2), (s(25), 4), (s(55), 2)],
            kill_every: (Duration::from_millis(1500), s(3)),
            receiver: vec![
                (Mode::Up, s(5)),
                (Mode::Down, s(10)),
                // long enough for two attempts of everything that failed meanwhile
                (Mode::Up, s(8)),
                (Mode::Failing(ServerError, 0.5), s(7)),
                (Mode::Up, s(3)),
                (Mode::Failing(RateLimited, 0.5), s(7)),
                (Mode::Up, s(3)),
                // PostgreSQL restarts in here (at 40s)
                (Mode::Failing(Slow, 0.6), s(7)),
                (Mode::Up, s(3)),
                (Mode::Failing(Silent, 0.3), s(7)),
                (Mode::Up, s(3)),
                (Mode::Failing(Cut, 0.5), s(7)),
                (Mode::Failing(CutBody, 0.5), s(5)),
            ],
            restarts: vec![s(40)],
            outage: s(2),
            retry_schedule: &[
                "250ms", "500ms", "1s", "2s", "3s", "4s", "5s", "5s", "5s", "5s",
            ],
            drain: s(150),
            resume_limit: s(15),
        }
    }

    pub fn full() -> Profile {
        use Outcome::*;
        Profile {
            name: "full",
            stream: s(660),
            writers: 4,
            pace: Duration::from_millis(120),
            fleet: vec![(s(0), 2), (s(90), 4), (s(200), 1), (s(260), 4), (s(400), 2)],
            kill_every: (s(2), s(8)),
            receiver: vec![
                (Mode::Up, s(20)),
                (Mode::Failing(ServerError, 0.5), s(30)),
                (Mode::Up, s(15)),
                (Mode::Failing(RateLimited, 0.6), s(30)),
                (Mode::Up, s(15)),
                (Mode::Failing(Slow, 0.7), s(30)),
                (Mode::Up, s(15)),
                // down for minutes
                (Mode::Down, s(150)),
                // long enough for two attempts of everything that failed meanwhile
                (Mode::Up, s(150)),
                (Mode::Failing(Silent, 0.3), s(30)),
                (Mode::Up, s(15)),
                (Mode::Failing(Cut, 0.5), s(30)),
                (Mode::Up, s(15)),
                (Mode::Failing(ServerError, 0.3), s(20)),
                (Mode::Failing(Silent, 0.2), s(20)),
                (Mode::Failing(Cut, 0.3), s(20)),
                (Mode::Failing(CutBody, 0.5), s(20)),
            ],
            restarts: vec![s(60), s(340), s(480)],
            outage: s(5),
            retry_schedule: &[
                "1s", "2s", "4s", "8s", "15s", "30s", "60s", "60s", "60s", "60s",
            ],
            drain: s(900),
            resume_limit: s(15),
        }
    }

    /// The sidecars' configuration file. Pausing a failing webhook is off: a paused webhook is
    /// probed one delivery at a time, so its deliveries would not go dead on the schedule.
    /// Batches are small (20 changes), so the backlogs that SIGKILLs leave are read in many
    /// batches cut between concurrent writers' transactions: the case where transaction ids and
    /// commit order disagree.
    pub fn sidecar_config(&self) -> String {
        let schedule: Vec<String> = self
            .retry_schedule
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect();
        format!(
            "[delivery]\n\
             poll_interval = \"100ms\"\n\
             default_timeout = \"2s\"\n\
             lease_margin = \"3s\"\n\
             retry_schedule = [{}]\n\
             retry_jitter = 0.2\n\
             max_retry_after = \"2s\"\n\
             pause_after_failures = 0\n\
             [assembly]\n\
             poll_interval = \"100ms\"\n\
             batch_changes = 20\n\
             [rules]\n\
             refresh_interval = \"1s\"\n\
             [metrics]\n\
             listen = \"\"\n\
             [log]\n\
             level = \"warn,netbox_outbox::sidecar=info\"\n\
             [shutdown]\n\
             grace_period = \"2s\"\n",
            schedule.join(", ")
        )
    }
}

/// Kills sidecars at random moments and resizes the fleet on schedule, until `stop`; pauses
/// while `calm` is held (around a database restart, so that the sidecars that ride it out are
/// the ones that were running).
pub async fn kill_sidecars(
    profile: &Profile,
    fleet: Arc<Mutex<Fleet>>,
    calm: Arc<tokio::sync::Mutex<()>>,
    clock: Instant,
    stop: CancellationToken,
) {
    loop {
        let (low, high) = profile.kill_every;
        let wait = rand::rng().random_range(low..=high);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let _calm = calm.lock().await;
        let size = profile
            .fleet
            .iter()
            .rev()
            .find(|(from, _)| clock.elapsed() >= *from)
            .map_or(1, |(_, n)| *n);
        let mut fleet = fleet.lock().unwrap();
        fleet.resize(size);
        fleet.kill_one_and_replace();
    }
}

/// Plays the receiver's phases, then leaves it up.
pub async fn play_receiver(
    receiver: Receiver,
    phases: Vec<(Mode, Duration)>,
    stop: CancellationToken,
) {
    for (mode, duration) in phases {
        receiver.set_mode(mode).await;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(duration) => {}
        }
    }
    receiver.set_mode(Mode::Up).await;
}

/// One PostgreSQL restart: when it went down and came back, and how soon after a change made
/// then reached the receiver.
#[derive(Debug, Clone)]
pub struct Restart {
    pub down: Duration,
    pub up: Duration,
    pub resumed_after: Option<Duration>,
}

/// Stops PostgreSQL immediately at each of the profile's moments and starts it again; then
/// commits a probe change and times its arrival (any answer counts: the sidecar is back).
#[allow(clippy::too_many_arguments)]
pub async fn restart_database(
    profile: &Profile,
    cluster: Arc<Cluster>,
    calm: Arc<tokio::sync::Mutex<()>>,
    fleet: Arc<Mutex<Fleet>>,
    mut probe: Writer,
    probe_object: i64,
    receiver: Receiver,
    clock: Instant,
    stop: CancellationToken,
) -> Vec<Restart> {
    let mut restarts = Vec::new();
    for at in &profile.restarts {
        let until = tokio::time::Instant::from_std(clock + *at);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(until) => {}
        }
        let _calm = calm.lock().await;
        // A sidecar still starting exits when the database goes away (a service manager starts
        // it again); the ones to prove are those already running.
        let starting = tokio::time::Instant::now() + Duration::from_secs(20);
        while !fleet.lock().unwrap().all_started() && tokio::time::Instant::now() < starting {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let down = clock.elapsed();
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.stop_immediately())
            .await
            .expect("stop PostgreSQL");
        tokio::time::sleep(profile.outage).await;
        let c = cluster.clone();
        tokio::task::spawn_blocking(move || c.start())
            .await
            .expect("start PostgreSQL");
        let up = clock.elapsed();
        let mut restart = Restart {
            down,
            up,
            resumed_after: None,
        };
        let deadline = tokio::time::Instant::now() + profile.resume_limit * 2;
        if let Some(marker) = probe.update(probe_object, &stop).await {
            while tokio::time::Instant::now() < deadline {
                if let Some(a) = receiver.arrivals().iter().find(|a| a.marker == marker) {
                    restart.resumed_after = Some(a.at.saturating_sub(up));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        restarts.push(restart);
    }
    restarts
}
