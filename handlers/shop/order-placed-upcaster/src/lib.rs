//! The shop's upcaster of `com.example.shop.order.placed.v1` to `v2`.
//!
//! Version 2 of `order.placed` replaces the number `amount` with `total`, the amount with its
//! currency (`{"amount": 25.0, "currency": "EUR"}`): a breaking change, so a handler that
//! reads v2 (the inventory) gets the v1 events in the log through this upcaster. Before v2
//! the shop priced everything in euros, so a v1 order's `total` is its `amount` in `EUR`.
//! Everything else is kept as it was: the other fields of the data (also those the v1 schema
//! does not name, which producers may add), the subject and the extensions (the SKU as
//! `partitionkey`).
//!
//! It refuses data that is not a v1 order: not a JSON object, without a number `amount` of
//! zero or more, without a non-empty `order_id` and `sku` or a `quantity` of at least 1, or
//! with a `total` already (which the upcast would overwrite). The host then dead-letters the
//! delivery, naming this step and the reason.
//!
//! Pure and deterministic, as every upcaster must be: the host upcasts a v1 event again on
//! every delivery to a v2 reader.

use evhost_sdk::{UpcastEvent, Upcaster};
use serde_json::{Map, Value, json};

const ORDER_PLACED_V1: &str = "com.example.shop.order.placed.v1";
/// The currency of every price before v2 made it explicit.
const CURRENCY_BEFORE_V2: &str = "EUR";

struct OrderPlacedUpcaster;

impl Upcaster for OrderPlacedUpcaster {
    fn upcast(mut event: UpcastEvent) -> Result<UpcastEvent, String> {
        if event.ty() != ORDER_PLACED_V1 {
            return Err(format!(
                "this upcaster turns `{ORDER_PLACED_V1}` into v2, and got `{}` (id `{}`)",
                event.ty(),
                event.id()
            ));
        }
        let order: Value = event.json()?;
        let upcast = v1_to_v2(order).map_err(|problem| {
            format!(
                "event `{ORDER_PLACED_V1}` (id `{}`) is not a v1 order: {problem}",
                event.id()
            )
        })?;
        event.set_json(&upcast)?;
        Ok(event)
    }
}

/// The v2 data of the v1 order `order`, or what makes it no v1 order.
fn v1_to_v2(order: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(mut order) = order else {
        return Err(format!(
            "its data is not a JSON object but {}",
            kind(&order)
        ));
    };
    non_empty_string(&order, "order_id")?;
    non_empty_string(&order, "sku")?;
    match order.get("quantity") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|quantity| quantity >= 1) => {}
        Some(other) => {
            return Err(format!(
                "`quantity` must be an integer of at least 1, got {other}"
            ));
        }
        None => return Err("it has no `quantity`".to_owned()),
    }
    if order.contains_key("total") {
        return Err("it has a `total` already, which the upcast to v2 would overwrite".to_owned());
    }
    // The number itself, not an `f64` made of it: the amount goes over exactly as written.
    let amount = match order.remove("amount") {
        Some(Value::Number(amount)) if amount.as_f64().is_some_and(|value| value >= 0.0) => amount,
        Some(other) => {
            return Err(format!(
                "`amount` must be a number of zero or more, got {other}"
            ));
        }
        None => return Err("it has no `amount`".to_owned()),
    };
    order.insert(
        "total".to_owned(),
        json!({"amount": amount, "currency": CURRENCY_BEFORE_V2}),
    );
    Ok(order)
}

fn non_empty_string(order: &Map<String, Value>, field: &str) -> Result<(), String> {
    match order.get(field) {
        Some(Value::String(text)) if !text.is_empty() => Ok(()),
        Some(other) => Err(format!("`{field}` must be a non-empty string, got {other}")),
        None => Err(format!("it has no `{field}`")),
    }
}

/// What a JSON value is, for a message.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

evhost_sdk::export_upcaster!(OrderPlacedUpcaster);

#[cfg(test)]
mod tests {
    use super::*;

    fn placed_v1(data: Value) -> UpcastEvent {
        let mut event = UpcastEvent::new("placed-1", "/shop/order", ORDER_PLACED_V1);
        event.set_json(&data).expect("JSON");
        event.set_subject("o-1");
        event.set_extension("partitionkey", "sku-1");
        event
    }

    #[test]
    fn the_amount_becomes_a_total_in_euros_and_the_rest_stays() {
        let event = placed_v1(json!({
            "order_id": "o-1", "sku": "sku-1", "quantity": 2, "amount": 25.0, "note": "gift",
        }));
        let upcast = OrderPlacedUpcaster::upcast(event).expect("a v1 order");
        assert_eq!(
            upcast.json::<Value>().expect("JSON"),
            json!({
                "order_id": "o-1", "sku": "sku-1", "quantity": 2, "note": "gift",
                "total": {"amount": 25.0, "currency": "EUR"},
            })
        );
        assert!(String::from_utf8_lossy(upcast.data()).contains(r#""amount":25.0"#));
        assert_eq!(upcast.datacontenttype(), Some("application/json"));
        assert_eq!(upcast.subject(), Some("o-1"));
        assert_eq!(upcast.partition_key(), Some("sku-1"));
    }

    #[test]
    fn an_amount_keeps_every_digit() {
        let event = placed_v1(json!({
            "order_id": "o-1", "sku": "sku-1", "quantity": 1, "amount": 0.1 + 0.2,
        }));
        let upcast = OrderPlacedUpcaster::upcast(event).expect("a v1 order");
        let data: Value = upcast.json().expect("JSON");
        assert_eq!(data["total"]["amount"].as_f64(), Some(0.1 + 0.2));
    }

    #[test]
    fn what_is_no_v1_order_is_refused_with_the_reason() {
        let cases = [
            (
                json!({"order_id": "o-1", "sku": "sku-1", "quantity": 1}),
                "no `amount`",
            ),
            (
                json!({"order_id": "o-1", "sku": "sku-1", "quantity": 1, "amount": "25"}),
                "`amount` must be a number",
            ),
            (
                json!({"order_id": "o-1", "sku": "sku-1", "quantity": 1, "amount": -1}),
                "`amount` must be a number of zero or more",
            ),
            (
                json!({"order_id": "o-1", "sku": "sku-1", "quantity": 0, "amount": 1}),
                "`quantity` must be an integer of at least 1",
            ),
            (
                json!({"sku": "sku-1", "quantity": 1, "amount": 1}),
                "no `order_id`",
            ),
            (
                json!({"order_id": "", "sku": "sku-1", "quantity": 1, "amount": 1}),
                "`order_id` must be a non-empty string",
            ),
            (
                json!({
                    "order_id": "o-1", "sku": "sku-1", "quantity": 1,
                    "total": {"amount": 1, "currency": "USD"},
                }),
                "a `total` already",
            ),
            (json!([1, 2]), "not a JSON object but an array"),
        ];
        for (data, reason) in cases {
            let err = OrderPlacedUpcaster::upcast(placed_v1(data.clone()))
                .expect_err(&format!("{data} is no v1 order"));
            assert!(err.contains("(id `placed-1`) is not a v1 order"), "{err}");
            assert!(err.contains(reason), "{data}: {err}");
        }
    }

    #[test]
    fn data_that_is_not_json_or_absent_is_refused() {
        let mut event = UpcastEvent::new("placed-2", "/shop/order", ORDER_PLACED_V1);
        assert!(
            OrderPlacedUpcaster::upcast(event.clone())
                .unwrap_err()
                .contains("has no data")
        );
        event.set_data(b"{".to_vec(), "application/json");
        assert!(
            OrderPlacedUpcaster::upcast(event)
                .unwrap_err()
                .contains("invalid data")
        );
    }

    #[test]
    fn another_type_is_refused() {
        let event = UpcastEvent::new("x", "/shop/order", "com.example.shop.order.placed.v2");
        let err = OrderPlacedUpcaster::upcast(event).expect_err("not v1");
        assert!(
            err.contains("got `com.example.shop.order.placed.v2`"),
            "{err}"
        );
    }
}
