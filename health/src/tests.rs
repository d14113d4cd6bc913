//! Engine-level tests: packs, samples and events together.

use std::path::PathBuf;

use super::*;
use crate::pack::parse_pack;
use HealthState::{Critical, Healthy, NotMonitored, Unknown, Warning};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/packs")
        .join(name)
}

fn set(packs: &[(&str, &str)]) -> PackSet {
    let parsed = packs
        .iter()
        .map(|(file, text)| parse_pack(file, text).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    PackSet::new(parsed).unwrap_or_else(|e| panic!("{e}"))
}

fn host(cpu: f64) -> ObjectSample {
    ObjectSample::new(ObjectKey::new(Class::Host, "box1")).value("cpu_percent", cpu)
}

fn samples(objects: Vec<ObjectSample>) -> Samples {
    Samples { objects }
}

fn changes(events: &[HealthEvent], monitor: &str) -> Vec<(Option<HealthState>, HealthState)> {
    events
        .iter()
        .filter_map(|e| match e {
            HealthEvent::StateChanged {
                monitor: m,
                from,
                to,
                ..
            } if m == monitor => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

const CPU_PACK: &str = r#"
[pack]
name = "t.cpu"

[[monitor]]
id = "cpu"
class = "host"
type = "threshold"
metric = "cpu_percent"
warning = 80
critical = 95
samples = 3

[[rule]]
id = "alert.cpu"
type = "alert"
monitor = "cpu"
severity = "warning"
message = "{monitor} on {object} is {state}"

[[rule]]
id = "collect.cpu"
type = "collect"
class = "host"
metrics = ["cpu_percent"]
every = 2
"#;

#[test]
fn built_in_pack_is_valid_and_names_what_the_sources_give() {
    let set = default_pack_set();
    assert_eq!(set.packs()[0].name, DEFAULT_PACK_NAME);
    assert!(set.packs()[0].sealed);
    let engine = HealthEngine::new(set);
    assert!(engine
        .wanted()
        .services
        .contains(&"ssh.service".to_string()));
}

#[test]
fn example_pack_is_valid_with_the_built_in_pack() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/packs/example.toml");
    let pack = load_pack(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pack.name, "acme.lab");
    assert!(!pack.sealed);
    pack_set_with_default(vec![pack]).unwrap();
}

#[test]
fn threshold_crosses_after_exactly_n_samples_and_goes_back() {
    let mut engine = HealthEngine::new(set(&[("cpu.toml", CPU_PACK)]));
    let mut t = 0;
    let mut round = |cpu: f64| {
        t += 10_000;
        engine.observe(&samples(vec![host(cpu)]), t)
    };
    assert_eq!(changes(&round(10.0), "cpu"), [(None, Unknown)]);
    assert!(changes(&round(10.0), "cpu").is_empty());
    assert_eq!(changes(&round(10.0), "cpu"), [(Some(Unknown), Healthy)]);
    // Two samples over the warning level change nothing, the third does.
    assert!(changes(&round(85.0), "cpu").is_empty());
    assert!(changes(&round(85.0), "cpu").is_empty());
    assert_eq!(changes(&round(85.0), "cpu"), [(Some(Healthy), Warning)]);
    // And back: three samples below.
    assert!(changes(&round(10.0), "cpu").is_empty());
    assert!(changes(&round(10.0), "cpu").is_empty());
    assert_eq!(changes(&round(10.0), "cpu"), [(Some(Warning), Healthy)]);
}

#[test]
fn alert_is_raised_then_resolves_itself() {
    let mut engine = HealthEngine::new(set(&[("cpu.toml", CPU_PACK)]));
    let mut raised = None;
    let mut resolved = None;
    for (i, cpu) in [10.0, 10.0, 10.0, 99.0, 99.0, 99.0, 99.0, 5.0, 5.0, 5.0]
        .into_iter()
        .enumerate()
    {
        let now = i64::try_from(i).unwrap() * 10_000;
        for e in engine.observe(&samples(vec![host(cpu)]), now) {
            match e {
                HealthEvent::AlertRaised { alert } => raised = Some((now, alert)),
                HealthEvent::AlertResolved {
                    alert,
                    reason,
                    at_ms,
                } => resolved = Some((at_ms, alert, reason)),
                _ => {}
            }
        }
        if i == 5 {
            assert_eq!(engine.open_alerts().len(), 1);
        }
    }
    let (at, alert) = raised.expect("alert raised");
    assert_eq!(at, 50_000);
    assert_eq!(alert.severity, Critical);
    assert_eq!(alert.message, "cpu on host/box1 is critical");
    let (at, alert, reason) = resolved.expect("alert resolved");
    assert_eq!(at, 90_000);
    assert_eq!(alert.rule, "alert.cpu");
    assert_eq!(reason, ResolveReason::Healthy);
    assert!(engine.open_alerts().is_empty());
}

#[test]
fn alert_escalates_from_warning_to_critical() {
    let pack = CPU_PACK.replace("samples = 3", "samples = 1");
    let mut engine = HealthEngine::new(set(&[("cpu.toml", &pack)]));
    let ev = engine.observe(&samples(vec![host(85.0)]), 1);
    assert!(ev
        .iter()
        .any(|e| matches!(e, HealthEvent::AlertRaised { alert } if alert.severity == Warning)));
    let ev = engine.observe(&samples(vec![host(99.0)]), 2);
    assert!(ev
        .iter()
        .any(|e| matches!(e, HealthEvent::AlertEscalated { alert } if alert.severity == Critical)));
    // Back to warning: still open (alerts resolve on healthy only).
    let ev = engine.observe(&samples(vec![host(85.0)]), 3);
    assert!(!ev
        .iter()
        .any(|e| matches!(e, HealthEvent::AlertResolved { .. })));
    assert_eq!(engine.open_alerts()[0].severity, Critical);
}

#[test]
fn an_unchanged_round_sends_nothing() {
    let mut engine = HealthEngine::new(default_pack_set());
    let round = || {
        let mut s = samples(vec![
            host(10.0).value("memory_used_percent", 20.0),
            ObjectSample::new(ObjectKey::new(Class::Filesystem, "/"))
                .label("fs_type", "ext4")
                .value("free_percent", 50.0),
            ObjectSample::new(ObjectKey::new(Class::Filesystem, "/run/user/0"))
                .label("fs_type", "tmpfs")
                .value("free_percent", 1.0),
        ]);
        s.add_services(&[ServiceStatus {
            unit: "ssh.service".into(),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            error: None,
        }]);
        s
    };
    let mut t = 0;
    let mut last = Vec::new();
    for _ in 0..5 {
        t += 10_000;
        last = engine.observe(&round(), t);
    }
    assert!(last.is_empty(), "{last:#?}");
    let tree = engine.tree();
    let ids: Vec<String> = tree.objects.iter().map(|o| o.object.to_string()).collect();
    assert_eq!(
        ids,
        ["host/box1", "filesystem//", "service/ssh.service"],
        "tmpfs is not discovered"
    );
    assert_eq!(tree.objects[0].health, Healthy);
    assert_eq!(
        tree.objects[1].parent,
        Some(ObjectKey::new(Class::Host, "box1"))
    );
}

#[test]
fn vm_dependency_rollup_uses_worst_of_percentage() {
    let mut engine = HealthEngine::new(default_pack_set());
    let vm = |name: &str, state: &str| {
        ObjectSample::new(ObjectKey::new(Class::Vm, name))
            .label("state", state)
            .parent(ObjectKey::new(Class::Host, "box1"))
    };
    let the_host = || host(1.0).value("memory_used_percent", 1.0);
    let vms_state = |engine: &HealthEngine| {
        let tree = engine.tree();
        tree.objects[0]
            .monitors
            .iter()
            .find(|m| m.id == "host.vms")
            .unwrap()
            .state
    };
    let mut t = 0;
    let mut observe = |engine: &mut HealthEngine, objects: Vec<ObjectSample>| {
        t += 1;
        for _ in 0..3 {
            engine.observe(&samples(objects.clone()), t);
        }
    };
    // 75 %: one crashed guest of four leaves the host's guests healthy…
    observe(
        &mut engine,
        vec![
            the_host(),
            vm("a", "running"),
            vm("b", "running"),
            vm("c", "running"),
            vm("d", "crashed"),
        ],
    );
    assert_eq!(vms_state(&engine), Healthy);
    // …two do not.
    observe(
        &mut engine,
        vec![
            the_host(),
            vm("a", "running"),
            vm("b", "running"),
            vm("c", "crashed"),
            vm("d", "crashed"),
        ],
    );
    assert_eq!(vms_state(&engine), Critical);
    // No guests at all: nothing to judge.
    observe(&mut engine, vec![the_host()]);
    assert_eq!(vms_state(&engine), NotMonitored);
}

#[test]
fn object_gone_resolves_its_alerts_and_is_reported() {
    let mut engine = HealthEngine::new(default_pack_set());
    let fs = |free: f64| {
        ObjectSample::new(ObjectKey::new(Class::Filesystem, "/srv"))
            .label("fs_type", "xfs")
            .value("free_percent", free)
    };
    engine.observe(&samples(vec![host(1.0), fs(3.0)]), 1);
    let ev = engine.observe(&samples(vec![host(1.0), fs(3.0)]), 2);
    assert!(
        ev.iter()
            .any(|e| matches!(e, HealthEvent::AlertRaised { alert } if alert.object.id == "/srv")),
        "{ev:#?}"
    );
    let ev = engine.observe(&samples(vec![host(1.0)]), 3);
    assert!(ev
        .iter()
        .any(|e| matches!(e, HealthEvent::ObjectRemoved { object, .. } if object.id == "/srv")));
    assert!(ev.iter().any(|e| matches!(
        e,
        HealthEvent::AlertResolved {
            reason: ResolveReason::ObjectGone,
            ..
        }
    )));
    assert!(engine.open_alerts().is_empty());
}

const OVERRIDES_PACK: &str = r#"
[pack]
name = "t.local"

[[group]]
id = "prod"
class = "filesystem"
include = ["/prod*"]

[[group]]
id = "big"
class = "filesystem"
include = ["/prod-big"]

[[override]]
id = "class-wide"
monitor = "filesystem.free"
class = "filesystem"
set = { warning = 40 }

[[override]]
id = "prod"
monitor = "filesystem.free"
group = "prod"
set = { warning = 50 }

[[override]]
id = "big"
monitor = "filesystem.free"
group = "big"
set = { warning = 30 }

[[override]]
id = "one"
monitor = "filesystem.free"
instance = "/prod-one"
set = { warning = 60 }
"#;

/// Free 45 %: the effective warning level decides the state.
#[test]
fn overrides_follow_precedence_and_report_conflicts() {
    let mut engine = HealthEngine::new(
        pack_set_with_default(vec![parse_pack("local.toml", OVERRIDES_PACK).unwrap()]).unwrap(),
    );
    let fs = |id: &str| {
        ObjectSample::new(ObjectKey::new(Class::Filesystem, id))
            .label("fs_type", "ext4")
            .value("free_percent", 45.0)
    };
    let objects = vec![
        host(1.0),
        fs("/data"),
        fs("/prod-a"),
        fs("/prod-one"),
        fs("/prod-big"),
    ];
    let mut events = Vec::new();
    for t in 0..2 {
        events.extend(engine.observe(&samples(objects.clone()), t));
    }
    let state = |id: &str| {
        engine
            .tree()
            .objects
            .iter()
            .find(|o| o.object.id == id)
            .unwrap()
            .monitors
            .iter()
            .find(|m| m.id == "filesystem.free")
            .unwrap()
            .state
    };
    assert_eq!(state("/data"), Healthy, "class: warning 40");
    assert_eq!(state("/prod-a"), Warning, "group over class: warning 50");
    assert_eq!(
        state("/prod-one"),
        Warning,
        "instance over group: warning 60"
    );
    // /prod-big is in both groups: a tie on scope, enforcement and origin, broken by the
    // override id ("big" < "prod"), and reported.
    assert_eq!(
        state("/prod-big"),
        Healthy,
        "tie broken towards `big` (warning 30)"
    );
    let conflicts = engine.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:#?}");
    assert_eq!(conflicts[0].object.id, "/prod-big");
    assert_eq!(conflicts[0].chosen, "t.local/big");
    assert_eq!(conflicts[0].over, ["t.local/prod=50"]);
    // The pack status the collector reports carries the conflict as one line.
    let reported = engine.pack_status().conflicts;
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert!(
        reported[0].starts_with("filesystem.free on filesystem//prod-big: warning = ")
            && reported[0].contains("from t.local/big over t.local/prod=50"),
        "{reported:?}"
    );
    assert!(events.iter().any(
        |e| matches!(e, HealthEvent::OverrideConflicts { conflicts } if conflicts.len() == 1)
    ));

    // Enforcing the group override wins the tie without a conflict.
    let enforced = OVERRIDES_PACK.replace(
        "id = \"prod\"\nmonitor",
        "id = \"prod\"\nenforced = true\nmonitor",
    );
    engine.set_packs(
        pack_set_with_default(vec![parse_pack("local.toml", &enforced).unwrap()]).unwrap(),
    );
    let mut events = Vec::new();
    for t in 2..4 {
        events.extend(engine.observe(&samples(objects.clone()), t));
    }
    assert!(engine.conflicts().is_empty());
    assert!(events.iter().any(
        |e| matches!(e, HealthEvent::OverrideConflicts { conflicts } if conflicts.is_empty())
    ));
    let tree = engine.tree();
    let big = tree
        .objects
        .iter()
        .find(|o| o.object.id == "/prod-big")
        .unwrap();
    assert_eq!(
        big.monitors
            .iter()
            .find(|m| m.id == "filesystem.free")
            .unwrap()
            .state,
        Warning
    );
}

#[test]
fn local_pack_beats_sealed_pack_at_equal_scope() {
    let sealed = r#"
[pack]
name = "a.vendor"
sealed = true

[[override]]
id = "vendor"
monitor = "filesystem.free"
class = "filesystem"
set = { warning = 60 }
"#;
    let local = r#"
[pack]
name = "z.local"

[[override]]
id = "local"
monitor = "filesystem.free"
class = "filesystem"
set = { warning = 30 }
"#;
    let packs = vec![
        parse_pack("a.toml", sealed).unwrap(),
        parse_pack("z.toml", local).unwrap(),
    ];
    let mut engine = HealthEngine::new(pack_set_with_default(packs).unwrap());
    let fs = ObjectSample::new(ObjectKey::new(Class::Filesystem, "/"))
        .label("fs_type", "ext4")
        .value("free_percent", 45.0);
    for t in 0..2 {
        engine.observe(&samples(vec![host(1.0), fs.clone()]), t);
    }
    let tree = engine.tree();
    assert_eq!(
        tree.objects[1]
            .monitors
            .iter()
            .find(|m| m.id == "filesystem.free")
            .unwrap()
            .state,
        Healthy
    );
    assert!(
        engine.conflicts().is_empty(),
        "different origins are not a tie"
    );
}

#[test]
fn disabling_a_monitor_makes_it_not_monitored_and_resolves_its_alert() {
    let mut engine = HealthEngine::new(set(&[(
        "cpu.toml",
        &CPU_PACK.replace("samples = 3", "samples = 1"),
    )]));
    engine.observe(&samples(vec![host(99.0)]), 1);
    assert_eq!(engine.open_alerts().len(), 1);
    let off = format!(
        "{}\n[[override]]\nid = \"off\"\nmonitor = \"cpu\"\ninstance = \"box1\"\nset = {{ enabled = false }}\n",
        CPU_PACK.replace("samples = 3", "samples = 1")
    );
    engine.set_packs(set(&[("cpu.toml", &off)]));
    let ev = engine.observe(&samples(vec![host(99.0)]), 2);
    assert_eq!(changes(&ev, "cpu"), [(Some(Critical), NotMonitored)]);
    assert!(ev.iter().any(|e| matches!(
        e,
        HealthEvent::AlertResolved {
            reason: ResolveReason::NotMonitored,
            ..
        }
    )));
    assert_eq!(engine.tree().objects[0].health, NotMonitored);
}

#[test]
fn set_packs_keeps_the_windows_of_unchanged_monitors() {
    let mut engine = HealthEngine::new(set(&[("cpu.toml", CPU_PACK)]));
    for t in 0..3 {
        engine.observe(&samples(vec![host(99.0)]), t);
    }
    assert_eq!(engine.tree().objects[0].monitors[0].state, Critical);
    let with_more = format!(
        "{CPU_PACK}\n[[monitor]]\nid = \"load\"\nclass = \"host\"\ntype = \"threshold\"\nmetric = \"load1\"\nwarning = 4\n"
    );
    engine.set_packs(set(&[("cpu.toml", &with_more)]));
    let ev = engine.observe(&samples(vec![host(99.0).value("load1", 0.5)]), 3);
    assert!(changes(&ev, "cpu").is_empty(), "{ev:#?}");
    assert_eq!(changes(&ev, "load"), [(None, Healthy)]);
}

#[test]
fn collect_rules_pick_values_every_n_rounds() {
    let mut engine = HealthEngine::new(set(&[("cpu.toml", CPU_PACK)]));
    for t in 0..4 {
        engine.observe(&samples(vec![host(f64::from(t))]), i64::from(t));
    }
    let got: Vec<(i64, f64)> = engine
        .take_collected()
        .into_iter()
        .map(|c| (c.at_ms, c.value))
        .collect();
    assert_eq!(got, [(0, 0.0), (2, 2.0)]);
    assert!(engine.take_collected().is_empty());
}

#[test]
fn collected_values_are_bounded_when_nobody_takes_them() {
    let every_round = CPU_PACK.replace("every = 2", "every = 1");
    let mut engine = HealthEngine::new(set(&[("cpu.toml", &every_round)]));
    let rounds = engine::MAX_COLLECTED + 25;
    for t in 0..rounds {
        let t = i64::try_from(t).unwrap();
        #[allow(clippy::cast_precision_loss)]
        engine.observe(&samples(vec![host((t % 50) as f64)]), t);
    }
    assert_eq!(engine.collected_dropped(), 25);
    let taken = engine.take_collected();
    assert_eq!(taken.len(), engine::MAX_COLLECTED);
    // The newest are kept.
    assert_eq!(
        taken.last().map(|c| c.at_ms),
        Some(i64::try_from(rounds - 1).unwrap())
    );
    assert_eq!(taken.first().map(|c| c.at_ms), Some(25));
    // Drained: empty until the next round, which adds one round's worth.
    assert!(engine.take_collected().is_empty());
    engine.observe(&samples(vec![host(1.0)]), 1 << 40);
    assert_eq!(engine.take_collected().len(), 1);
    assert!(engine.take_collected().is_empty());
}

#[test]
fn a_restored_engine_resolves_the_alert_opened_before_the_restart() {
    let packs = || set(&[("cpu.toml", CPU_PACK)]);
    let mut before = HealthEngine::new(packs());
    let mut raised = None;
    for (i, cpu) in [99.0, 99.0, 99.0].into_iter().enumerate() {
        for e in before.observe(&samples(vec![host(cpu)]), i64::try_from(i).unwrap()) {
            if let HealthEvent::AlertRaised { alert } = e {
                raised = Some(alert);
            }
        }
    }
    let raised = raised.expect("raised before the restart");
    // Through JSON, as the collector keeps it.
    let text = serde_json::to_string(&before.snapshot()).unwrap();
    let mut after = HealthEngine::new(packs());
    assert!(after.restore(serde_json::from_str(&text).unwrap()));
    assert_eq!(after.open_alerts(), vec![raised.clone()]);
    // Still bad: nothing raised again, no state re-sent.
    let still = after.observe(&samples(vec![host(99.0)]), 10);
    assert!(
        still.iter().all(|e| !matches!(
            e,
            HealthEvent::AlertRaised { .. } | HealthEvent::StateChanged { .. }
        )),
        "{still:?}"
    );
    // Clears (the window of three continues from before the restart): the same alert
    // resolves.
    let mut resolved = None;
    for t in 11..14 {
        for e in after.observe(&samples(vec![host(5.0)]), t) {
            match e {
                HealthEvent::AlertResolved { alert, reason, .. } => {
                    resolved = Some((alert, reason));
                }
                HealthEvent::AlertRaised { alert } => panic!("raised again: {alert:?}"),
                _ => {}
            }
        }
    }
    let (alert, reason) = resolved.expect("resolved after the restart");
    assert_eq!(alert, raised);
    assert_eq!(reason, ResolveReason::Healthy);
    // A snapshot of an unknown format is ignored.
    let mut other = HealthEngine::new(packs());
    assert!(!other.restore(engine::EngineSnapshot {
        version: 99,
        ..engine::EngineSnapshot::default()
    }));
    assert!(other.open_alerts().is_empty());
}

#[test]
fn a_restored_engine_resolves_alerts_of_objects_gone_while_it_was_down() {
    let vm = ObjectSample::new(ObjectKey::new(Class::Vm, "g1"))
        .label("state", "crashed")
        .label("uuid", "u1");
    let mut engine_default = HealthEngine::new(default_pack_set());
    for t in 0..2 {
        engine_default.observe(&samples(vec![host(1.0), vm.clone()]), t);
    }
    assert_eq!(engine_default.open_alerts().len(), 1);
    let snap = engine_default.snapshot();
    let mut after = HealthEngine::new(default_pack_set());
    after.restore(snap);
    let events = after.observe(&samples(vec![host(1.0)]), 5);
    assert!(
        events.iter().any(|e| matches!(
            e,
            HealthEvent::AlertResolved {
                reason: ResolveReason::ObjectGone,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(after.open_alerts().is_empty());
}

#[test]
fn rate_monitor_judges_per_second_increase() {
    let pack = r#"
[pack]
name = "t.rate"

[[monitor]]
id = "errs"
class = "nic"
type = "threshold"
metric = "rx_errors"
rate = true
warning = 10

[[discovery]]
id = "nics"
class = "nic"
"#;
    let mut engine = HealthEngine::new(set(&[("rate.toml", pack)]));
    let nic = |errors: f64| {
        ObjectSample::new(ObjectKey::new(Class::Nic, "eth0")).value("rx_errors", errors)
    };
    let state = |engine: &HealthEngine| engine.tree().objects[1].monitors[0].state;
    engine.observe(&samples(vec![host(1.0), nic(100.0)]), 0);
    assert_eq!(state(&engine), Unknown, "first sample primes the rate");
    engine.observe(&samples(vec![host(1.0), nic(150.0)]), 10_000);
    assert_eq!(state(&engine), Healthy, "5 errors/s");
    engine.observe(&samples(vec![host(1.0), nic(350.0)]), 20_000);
    assert_eq!(state(&engine), Warning, "20 errors/s");
    engine.observe(&samples(vec![host(1.0), nic(0.0)]), 30_000);
    assert_eq!(state(&engine), Warning, "counter reset: no judgement");
}

#[test]
fn certificate_expiry_counts_days_from_now() {
    let mut engine = HealthEngine::new(default_pack_set());
    let day = 86_400_000_i64;
    let now = 1_700_000_000_000_i64;
    let mut s = samples(vec![host(1.0)]);
    s.add_certificates(&[CertificateStatus {
        id: "outpost-collector".into(),
        path: "/var/lib/outpost-collector/cert.pem".into(),
        subject: "CN=box1".into(),
        not_after_ms: Some(now + 10 * day),
        error: None,
    }]);
    let ev = engine.observe(&s, now);
    assert_eq!(changes(&ev, "certificate.expiry"), [(None, Warning)]);
    assert!(ev.iter().any(|e| matches!(e, HealthEvent::AlertRaised { alert } if alert.rule == "alert.certificate.expiry")));
    let ev = engine.observe(&s, now + 4 * day);
    assert_eq!(
        changes(&ev, "certificate.expiry"),
        [(Some(Warning), Critical)]
    );
}

// ---- bad input: file, line and reason ----

fn rejected(name: &str) -> Vec<String> {
    match load_pack(&fixture(name)) {
        Err(LoadError::Invalid(errors)) => errors.0.iter().map(ToString::to_string).collect(),
        other => panic!("{name} should be rejected, got {other:?}"),
    }
}

#[test]
fn rejects_unknown_monitor_type() {
    let e = rejected("unknown-monitor-type.toml");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].ends_with("unknown-monitor-type.toml:7: unknown monitor type \"vibe_check\" (expected one of threshold, filesystem_free, certificate_expiry, vm_state, service_active)"), "{e:?}");
}

#[test]
fn rejects_a_cycle_in_rollups() {
    let e = rejected("rollup-cycle.toml");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].ends_with("rollup-cycle.toml:12: cycle in rollups: vm.a -> vm.b -> vm.a"),
        "{e:?}"
    );
}

#[test]
fn rejects_a_cycle_through_dependency_rollups() {
    let e = rejected("dependency-cycle.toml");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("dependency-cycle.toml:6: cycle in rollups: "),
        "{e:?}"
    );
    assert!(
        e[0].contains("vm.on-host") && e[0].contains("health(host)"),
        "{e:?}"
    );
}

#[test]
fn rejects_an_override_naming_an_unknown_target() {
    let e = rejected("override-unknown-target.toml");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].ends_with("override-unknown-target.toml:4: override \"tighter-cpu\" names unknown monitor \"host.cpuu\""), "{e:?}");
    // Unknown rule and unknown group too.
    let text = "[pack]\nname = \"t\"\n\n[[override]]\nid = \"a\"\nrule = \"nope\"\nclass = \"host\"\nset = { enabled = false }\n\n[[override]]\nid = \"b\"\nmonitor = \"host.cpu\"\ngroup = \"nope\"\nset = { warning = 1 }\n";
    let errs = pack_set_with_default(vec![parse_pack("t.toml", text).unwrap()]).unwrap_err();
    let errs: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
    assert_eq!(
        errs,
        [
            "t.toml:4: override \"a\" names unknown rule \"nope\"",
            "t.toml:10: override \"b\" names unknown group \"nope\"",
        ]
    );
}

#[test]
fn rejects_a_threshold_that_is_not_a_number() {
    let e = rejected("threshold-not-a-number.toml");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].ends_with("threshold-not-a-number.toml:9: threshold `warning` is not a number (found string \"high\")"), "{e:?}");
}

#[test]
fn rejects_parameters_the_target_does_not_have() {
    let text = "[pack]\nname = \"t\"\n\n[[override]]\nid = \"a\"\nmonitor = \"vm.state\"\nclass = \"vm\"\nset = { warning = 1 }\n";
    let errs = pack_set_with_default(vec![parse_pack("t.toml", text).unwrap()]).unwrap_err();
    assert_eq!(
        errs.to_string(),
        "t.toml:8: override \"a\": \"vm.state\" has no parameter `warning` (it has enabled, samples)"
    );
    let text = "[pack]\nname = \"t\"\n\n[[override]]\nid = \"a\"\nmonitor = \"vm.state\"\nclass = \"host\"\nset = { enabled = false }\n";
    let errs = pack_set_with_default(vec![parse_pack("t.toml", text).unwrap()]).unwrap_err();
    assert!(
        errs.to_string()
            .contains("is for class host but \"vm.state\" judges class vm"),
        "{errs}"
    );
}

#[test]
fn rejects_duplicate_ids_across_packs() {
    let text = "[pack]\nname = \"t\"\n\n[[monitor]]\nid = \"host.cpu\"\nclass = \"host\"\ntype = \"threshold\"\nmetric = \"load1\"\nwarning = 3\n";
    let errs = pack_set_with_default(vec![parse_pack("t.toml", text).unwrap()]).unwrap_err();
    assert!(
        errs.to_string().starts_with(
            "t.toml:4: monitor id \"host.cpu\" is already defined at health/src/default_pack.toml:"
        ),
        "{errs}"
    );
}

#[test]
fn unreadable_pack_is_a_read_error() {
    let err = load_pack(&fixture("absent.toml")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }));
    assert!(err.to_string().contains("absent.toml"));
}

// ---- packs are outside input: never a panic ----

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any text is a pack or a list of errors.
    #[test]
    fn any_text_never_panics(text in "\\PC{0,300}") {
        if let Ok(pack) = parse_pack("fuzz.toml", &text) {
            let _ = pack_set_with_default(vec![pack]);
        }
    }

    /// A damaged copy of the built-in pack is rejected with lines inside the file, or, if
    /// it still validates, evaluates without panicking.
    #[test]
    fn damaged_built_in_pack_never_panics(start in 0usize..DEFAULT_PACK_TOML.len(), len in 0usize..40) {
        let text = DEFAULT_PACK_TOML;
        let at = |i: usize| (0..=i.min(text.len())).rev().find(|j| text.is_char_boundary(*j)).unwrap_or(0);
        let (a, b) = (at(start), at(start + len));
        let damaged = format!("{}{}", &text[..a], &text[b..]);
        match parse_pack("damaged.toml", &damaged).map_err(|e| e.0).and_then(|p| PackSet::new(vec![p]).map_err(|e| e.0)) {
            Ok(set) => {
                let mut engine = HealthEngine::new(set);
                let _ = engine.observe(&samples(vec![host(50.0)]), 1);
                let _ = engine.tree();
            }
            Err(errors) => {
                let lines = damaged.lines().count().max(1);
                for e in errors {
                    proptest::prop_assert!(e.line >= 1 && e.line <= lines + 1, "{e}");
                }
            }
        }
    }
}
