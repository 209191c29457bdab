//! Threshold-rule RPCs (the processor evaluates the rules).

use std::time::SystemTime;

use tonic::Status;
use tributary_platform::status::{self as pstatus, violation};
use tributary_proto::json::{json_to_value, pointer_tokens, value_to_json};
use tributary_proto::v1::{
    Alert, Comparator, CreateRuleRequest, DeleteRuleRequest, DeleteRuleResponse, ListAlertsRequest,
    ListAlertsResponse, ListRulesRequest, ListRulesResponse, Rule,
};
use tributary_proto::validate::{FieldViolation, is_event_type};
use tributary_store::rules::{self as store, RuleRow};

use crate::context::{AdminContext, db_status};

fn comparator_name(c: Comparator) -> Option<&'static str> {
    Some(match c {
        Comparator::Gt => "GT",
        Comparator::Gte => "GTE",
        Comparator::Lt => "LT",
        Comparator::Lte => "LTE",
        Comparator::Eq => "EQ",
        Comparator::Ne => "NE",
        Comparator::Unspecified => return None,
    })
}

fn comparator_of(name: &str) -> Comparator {
    match name {
        "GT" => Comparator::Gt,
        "GTE" => Comparator::Gte,
        "LT" => Comparator::Lt,
        "LTE" => Comparator::Lte,
        "EQ" => Comparator::Eq,
        "NE" => Comparator::Ne,
        _ => Comparator::Unspecified,
    }
}

fn to_proto(r: RuleRow) -> Rule {
    Rule {
        rule_id: r.rule_id,
        name: r.name,
        event_type: r.event_type,
        path: r.pointer,
        comparator: comparator_of(&r.comparator) as i32,
        threshold: Some(json_to_value(r.threshold)),
        webhook_url: r.webhook_url,
        description: r.description,
        created_at: Some(r.created_at.into()),
    }
}

pub async fn create(ctx: &AdminContext, request: CreateRuleRequest) -> Result<Rule, Status> {
    let mut v = Vec::new();
    let mut bad = |field: &str, why: String| {
        v.push(FieldViolation {
            field: field.into(),
            description: why,
        })
    };
    if request.name.trim().is_empty() || request.name.chars().count() > 128 {
        bad("name", "is required, at most 128 characters".into());
    }
    if !is_event_type(&request.event_type) {
        bad("event_type", "must match ^[a-z][a-z0-9_.-]{0,63}$".into());
    }
    let path = pointer_tokens(&request.path)
        .map_err(|why| bad("path", why))
        .ok();
    let comparator = Comparator::try_from(request.comparator)
        .ok()
        .and_then(comparator_name);
    if comparator.is_none() {
        bad(
            "comparator",
            "must be one of COMPARATOR_GT, _GTE, _LT, _LTE, _EQ, _NE".into(),
        );
    }
    let threshold = match request.threshold.as_ref().map(value_to_json) {
        None => {
            bad("threshold", "is required".into());
            None
        }
        Some(Err(e)) => {
            bad("threshold", e.to_string());
            None
        }
        Some(Ok(t)) => {
            let ordered = matches!(comparator, Some("GT" | "GTE" | "LT" | "LTE"));
            if ordered && !(t.is_number() || t.is_string()) {
                bad(
                    "threshold",
                    "must be a number or a string for an ordering comparator".into(),
                );
            }
            Some(t)
        }
    };
    if !request.webhook_url.is_empty()
        && let Err(why) = ctx.webhooks.check_url(&request.webhook_url)
    {
        bad("webhook_url", why);
    }
    let (Some(path), Some(comparator), Some(threshold), true) =
        (path, comparator, threshold, v.is_empty())
    else {
        return Err(pstatus::invalid_argument(&v));
    };
    let row = RuleRow {
        rule_id: uuid::Uuid::now_v7().to_string(),
        name: request.name.trim().to_owned(),
        event_type: request.event_type,
        path,
        pointer: request.path,
        comparator: comparator.to_owned(),
        threshold,
        webhook_url: request.webhook_url,
        description: request.description,
        created_at: SystemTime::now(),
    };
    let created = ctx
        .pool
        .run(async |client| store::create(client, &row).await)
        .await
        .map_err(|e| db_status("cannot create the rule", &e))?;
    tracing::info!(rule_id = %created.rule_id, name = %created.name, "rule created");
    Ok(to_proto(created))
}

pub async fn list(
    ctx: &AdminContext,
    request: ListRulesRequest,
) -> Result<ListRulesResponse, Status> {
    let page_size = if request.page_size <= 0 {
        100
    } else {
        i64::from(request.page_size.min(1000))
    };
    let after = if request.page_token.is_empty() {
        None
    } else {
        Some(crate::paging::decode("r1", &request.page_token)?)
    };
    let event_type = Some(request.event_type.as_str()).filter(|s| !s.is_empty());
    let mut rows = ctx
        .pool
        .run(async |client| store::list(client, event_type, after.as_deref(), page_size + 1).await)
        .await
        .map_err(|e| db_status("cannot list rules", &e))?;
    let next_page_token = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|r| crate::paging::encode("r1", &r.rule_id))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListRulesResponse {
        rules: rows.into_iter().map(to_proto).collect(),
        next_page_token,
    })
}

pub async fn delete(
    ctx: &AdminContext,
    request: DeleteRuleRequest,
) -> Result<DeleteRuleResponse, Status> {
    if ctx
        .pool
        .run(async |client| store::delete(client, &request.rule_id).await)
        .await
        .map_err(|e| db_status("cannot delete the rule", &e))?
    {
        Ok(DeleteRuleResponse {})
    } else {
        Err(Status::not_found(format!(
            "no rule with rule_id {:?}",
            request.rule_id
        )))
    }
}

pub async fn alerts(
    ctx: &AdminContext,
    request: ListAlertsRequest,
) -> Result<ListAlertsResponse, Status> {
    let page_size = if request.page_size <= 0 {
        100
    } else {
        i64::from(request.page_size.min(1000))
    };
    let after = if request.page_token.is_empty() {
        None
    } else {
        Some(
            crate::paging::decode("a1", &request.page_token)?
                .parse::<i64>()
                .map_err(|_| crate::paging::malformed())?,
        )
    };
    let since = request
        .triggered_after
        .map(SystemTime::try_from)
        .transpose()
        .map_err(|e| violation("triggered_after", format!("is not a valid timestamp: {e}")))?;
    let rule_id = Some(request.rule_id.as_str()).filter(|s| !s.is_empty());
    let mut rows = ctx
        .pool
        .run(async |client| store::list_alerts(client, rule_id, since, after, page_size + 1).await)
        .await
        .map_err(|e| db_status("cannot list alerts", &e))?;
    let next_page_token = if rows.len() as i64 > page_size {
        rows.truncate(page_size as usize);
        rows.last()
            .map(|a| crate::paging::encode("a1", a.alert_id))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(ListAlertsResponse {
        alerts: rows
            .into_iter()
            .map(|a| Alert {
                alert_id: a.alert_id,
                rule_id: a.rule_id,
                rule_name: a.rule_name,
                event_id: a.event_id,
                event_type: a.event_type,
                observed: Some(json_to_value(a.observed)),
                triggered_at: Some(a.triggered_at.into()),
                webhook_status: a.webhook_status,
            })
            .collect(),
        next_page_token,
    })
}
