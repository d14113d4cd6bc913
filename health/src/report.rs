//! From engine events to wire records: what of one health round travels.
//!
//! State changes and removed objects of a round go up as one `health` record; every alert
//! event as its own `alert` record. Override conflicts are not sent; the collector logs
//! them. A round without events yields no record, so an unchanged box sends nothing.

use outpost_proto::health::alert_id;
use outpost_proto::{AlertEvent, AlertStatus, CollectedSample, HealthChange, Record};

use super::engine::{Alert, CollectedValue, HealthEvent};

/// The records of one round's events, in event order (the `health` record first).
#[must_use]
pub fn plan_health_records(events: &[HealthEvent], collected_at_ms: i64) -> Vec<Record> {
    let mut changes = Vec::new();
    let mut removed = Vec::new();
    let mut alerts = Vec::new();
    for event in events {
        match event {
            HealthEvent::StateChanged {
                object,
                monitor,
                from,
                to,
                at_ms,
            } => changes.push(HealthChange {
                object: object.to_string(),
                monitor: monitor.clone(),
                from: from.map(|s| s.as_str().to_string()),
                to: to.as_str().to_string(),
                at_ms: *at_ms,
            }),
            HealthEvent::ObjectRemoved { object, .. } => removed.push(object.to_string()),
            HealthEvent::AlertRaised { alert } => {
                alerts.push(alert_event(
                    alert,
                    AlertStatus::Raised,
                    alert.raised_at_ms,
                    None,
                ));
            }
            HealthEvent::AlertEscalated { alert } => {
                alerts.push(alert_event(
                    alert,
                    AlertStatus::Escalated,
                    collected_at_ms,
                    None,
                ));
            }
            HealthEvent::AlertResolved {
                alert,
                reason,
                at_ms,
            } => {
                let reason = serde_json::to_value(reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
                alerts.push(alert_event(alert, AlertStatus::Resolved, *at_ms, reason));
            }
            HealthEvent::OverrideConflicts { .. } => {}
        }
    }
    let mut records = Vec::with_capacity(alerts.len() + 1);
    if !changes.is_empty() || !removed.is_empty() {
        records.push(Record::Health {
            collected_at_ms,
            changes,
            removed,
        });
    }
    records.extend(alerts.into_iter().map(|alert| Record::Alert {
        collected_at_ms,
        alert,
    }));
    records
}

/// The `collected` record of the values collect rules picked ([`crate::HealthEngine::take_collected`]);
/// none when there are none.
#[must_use]
pub fn plan_collected_record(values: &[CollectedValue], collected_at_ms: i64) -> Option<Record> {
    if values.is_empty() {
        return None;
    }
    Some(Record::Collected {
        collected_at_ms,
        values: values
            .iter()
            .map(|v| CollectedSample {
                rule: v.rule.clone(),
                object: v.object.to_string(),
                metric: v.metric.clone(),
                value: v.value,
                at_ms: v.at_ms,
            })
            .collect(),
    })
}

fn alert_event(
    alert: &Alert,
    status: AlertStatus,
    at_ms: i64,
    reason: Option<String>,
) -> AlertEvent {
    let object = alert.object.to_string();
    AlertEvent {
        id: alert_id(&alert.rule, &object, alert.raised_at_ms),
        status,
        severity: alert.severity.as_str().to_string(),
        object,
        monitor: alert.monitor.clone(),
        rule: alert.rule.clone(),
        message: alert.message.clone(),
        raised_at_ms: alert.raised_at_ms,
        at_ms,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResolveReason;
    use crate::{Class, HealthState, ObjectKey};

    fn alert() -> Alert {
        Alert {
            rule: "fs-full".into(),
            monitor: "fs-free".into(),
            object: ObjectKey::new(Class::Filesystem, "/srv"),
            severity: HealthState::Critical,
            message: "/srv is full".into(),
            raised_at_ms: 10,
        }
    }

    #[test]
    fn no_events_no_records() {
        assert!(plan_health_records(&[], 5).is_empty());
        assert!(plan_collected_record(&[], 5).is_none());
    }

    #[test]
    fn collected_values_travel_as_one_record() {
        let v = CollectedValue {
            rule: "collect.host".into(),
            object: ObjectKey::new(Class::Host, "box"),
            metric: "load1".into(),
            value: 0.25,
            at_ms: 7,
        };
        match plan_collected_record(&[v.clone(), v], 9) {
            Some(Record::Collected {
                collected_at_ms,
                values,
            }) => {
                assert_eq!(collected_at_ms, 9);
                assert_eq!(values.len(), 2);
                assert_eq!(values[0].object, "host/box");
                assert_eq!(values[0].metric, "load1");
                assert!((values[0].value - 0.25).abs() < f64::EPSILON);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changes_share_one_record_and_alerts_get_their_own() {
        let host = ObjectKey::new(Class::Host, "box");
        let events = vec![
            HealthEvent::StateChanged {
                object: host.clone(),
                monitor: "health".into(),
                from: None,
                to: HealthState::Healthy,
                at_ms: 10,
            },
            HealthEvent::ObjectRemoved {
                object: ObjectKey::new(Class::Vm, "gone"),
                at_ms: 10,
            },
            HealthEvent::AlertRaised { alert: alert() },
            HealthEvent::AlertResolved {
                alert: alert(),
                reason: ResolveReason::Healthy,
                at_ms: 20,
            },
            HealthEvent::OverrideConflicts {
                conflicts: Vec::new(),
            },
        ];
        let records = plan_health_records(&events, 20);
        let kinds: Vec<_> = records.iter().map(Record::kind).collect();
        assert_eq!(kinds, ["health", "alert", "alert"]);
        match &records[0] {
            Record::Health {
                changes, removed, ..
            } => {
                assert_eq!(changes.len(), 1);
                assert_eq!(changes[0].object, "host/box");
                assert_eq!(changes[0].from, None);
                assert_eq!(changes[0].to, "healthy");
                assert_eq!(removed, &["vm/gone".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let (
            Record::Alert { alert: raised, .. },
            Record::Alert {
                alert: resolved, ..
            },
        ) = (&records[1], &records[2])
        else {
            panic!("{records:?}")
        };
        assert_eq!(raised.status, AlertStatus::Raised);
        assert_eq!(raised.id, resolved.id, "one occurrence, one id");
        assert_eq!(raised.object, "filesystem//srv");
        assert_eq!(raised.severity, "critical");
        assert_eq!(resolved.status, AlertStatus::Resolved);
        assert_eq!(resolved.reason.as_deref(), Some("healthy"));
        assert_eq!(resolved.at_ms, 20);
    }
}
