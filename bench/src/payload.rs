//! The CloudEvents the load generator posts, in each content mode of the HTTP binding.
//!
//! Every request is rendered from a sequence number, so that every event gets a unique
//! (`source`, `id`) and the host's duplicate check never short-cuts the work. Event ids are
//! `{prefix}-{n}`, with `n` the event's own number (a batch of N takes N numbers), so that
//! a later look at the host's log can tell which event was sent when.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::Full;

/// How events go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One event per request: attributes in `ce-*` headers, data as the body.
    Binary,
    /// One event per request as `application/cloudevents+json`.
    Structured,
    /// This many events per request as `application/cloudevents-batch+json`.
    Batch(u32),
}

impl Mode {
    pub fn events_per_request(self) -> u64 {
        match self {
            Mode::Binary | Mode::Structured => 1,
            Mode::Batch(n) => u64::from(n.max(1)),
        }
    }

    pub fn label(self) -> String {
        match self {
            Mode::Binary => "binary".into(),
            Mode::Structured => "structured".into(),
            Mode::Batch(n) => format!("batch{n}"),
        }
    }

    /// Parses `binary`, `structured`, or `batch` (10 events) / `batchN`.
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "binary" => Some(Mode::Binary),
            "structured" => Some(Mode::Structured),
            "batch" => Some(Mode::Batch(10)),
            _ => text
                .strip_prefix("batch")
                .and_then(|n| n.parse().ok())
                .filter(|n| *n > 0)
                .map(Mode::Batch),
        }
    }
}

/// What the events say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// `{"n": N}` under the given type.
    Counter { ty: String },
    /// `{"n": N, ...}` under the given type: `fields` (JSON members, e.g.
    /// `"steps":["a.v1"]`) follow `n` in the object.
    CounterWith { ty: String, fields: String },
    /// `{"n": N}` under the given type, with the `partitionkey` extension cycling through
    /// `keys` distinct values (`k0`, `k1`, ...): event N gets key `k{N % keys}`.
    Keyed { ty: String, keys: u32 },
    /// The shop's PlaceOrder command (`com.example.shop.order.place.v1`) for order `o-N`,
    /// spread over `skus` SKUs, amount 25 (always paid), subject = the order id.
    PlaceOrder { skus: u32 },
}

pub const PLACE_ORDER: &str = "com.example.shop.order.place.v1";
pub const STOCK_ADDED: &str = "com.example.shop.stock.added.v1";
pub const SHIPMENT_CREATED: &str = "com.example.shop.shipment.created.v1";
/// Not `/bench`: the app is called `bench`, and the host keeps `/{app}` and what is under it
/// for its handlers' own events.
pub const SOURCE: &str = "/load";

/// Renders requests: one per sequence number.
#[derive(Debug, Clone)]
pub struct Payload {
    pub mode: Mode,
    pub body: Body,
    /// Starts every event id, so that runs against one host never collide.
    pub prefix: String,
    /// `host:port`, for the `Host` header.
    pub authority: String,
    pub path: String,
}

/// One event's attributes and data.
struct Rendered {
    id: String,
    ty: String,
    subject: Option<String>,
    partitionkey: Option<String>,
    data: String,
}

impl Payload {
    /// The id of event number `n`.
    pub fn id_of(&self, n: u64) -> String {
        format!("{}-{n}", self.prefix)
    }

    fn event(&self, n: u64) -> Rendered {
        let id = self.id_of(n);
        match &self.body {
            Body::Counter { ty } => Rendered {
                id,
                ty: ty.clone(),
                subject: None,
                partitionkey: None,
                data: format!("{{\"n\":{n}}}"),
            },
            Body::CounterWith { ty, fields } => Rendered {
                id,
                ty: ty.clone(),
                subject: None,
                partitionkey: None,
                data: format!("{{\"n\":{n},{fields}}}"),
            },
            Body::Keyed { ty, keys } => Rendered {
                id,
                ty: ty.clone(),
                subject: None,
                partitionkey: Some(format!("k{}", n % u64::from((*keys).max(1)))),
                data: format!("{{\"n\":{n}}}"),
            },
            Body::PlaceOrder { skus } => {
                let order = format!("{}-o{n}", self.prefix);
                let sku = n % u64::from((*skus).max(1));
                Rendered {
                    id,
                    ty: PLACE_ORDER.to_owned(),
                    data: format!(
                        "{{\"order_id\":\"{order}\",\"sku\":\"sku-{sku}\",\"quantity\":1,\"amount\":25.0}}"
                    ),
                    subject: Some(order),
                    partitionkey: None,
                }
            }
        }
    }

    fn structured(event: &Rendered, out: &mut String) {
        out.push_str("{\"specversion\":\"1.0\",\"id\":\"");
        out.push_str(&event.id);
        out.push_str("\",\"source\":\"");
        out.push_str(SOURCE);
        out.push_str("\",\"type\":\"");
        out.push_str(&event.ty);
        out.push('"');
        if let Some(subject) = &event.subject {
            let _ = write!(out, ",\"subject\":\"{subject}\"");
        }
        if let Some(key) = &event.partitionkey {
            let _ = write!(out, ",\"partitionkey\":\"{key}\"");
        }
        out.push_str(",\"datacontenttype\":\"application/json\",\"data\":");
        out.push_str(&event.data);
        out.push('}');
    }

    /// The request for sequence number `seq` (events `seq * per_request ..`).
    pub fn request(&self, seq: u64) -> Request<Full<Bytes>> {
        let builder = Request::builder()
            .method(Method::POST)
            .uri(self.path.as_str())
            .header(header::HOST, self.authority.as_str());
        let first = seq * self.mode.events_per_request();
        let request = match self.mode {
            Mode::Binary => {
                let event = self.event(first);
                let mut builder = builder
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("ce-specversion", "1.0")
                    .header("ce-source", SOURCE)
                    .header("ce-id", value(&event.id))
                    .header("ce-type", value(&event.ty));
                if let Some(subject) = &event.subject {
                    builder = builder.header("ce-subject", value(subject));
                }
                if let Some(key) = &event.partitionkey {
                    builder = builder.header("ce-partitionkey", value(key));
                }
                builder.body(Full::new(Bytes::from(event.data)))
            }
            Mode::Structured => {
                let mut body = String::with_capacity(192);
                Self::structured(&self.event(first), &mut body);
                builder
                    .header(header::CONTENT_TYPE, "application/cloudevents+json")
                    .body(Full::new(Bytes::from(body)))
            }
            Mode::Batch(n) => {
                let mut body = String::with_capacity(192 * n as usize);
                body.push('[');
                for i in 0..u64::from(n) {
                    if i > 0 {
                        body.push(',');
                    }
                    Self::structured(&self.event(first + i), &mut body);
                }
                body.push(']');
                builder
                    .header(header::CONTENT_TYPE, "application/cloudevents-batch+json")
                    .body(Full::new(Bytes::from(body)))
            }
        };
        request.expect("the bench renders valid requests")
    }

    /// The event number an id of this payload carries, if it is one.
    pub fn number_of(&self, id: &str) -> Option<u64> {
        id.strip_prefix(&self.prefix)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }

    /// The order number of an order id made by [`Body::PlaceOrder`].
    pub fn order_number_of(&self, order_id: &str) -> Option<u64> {
        order_id
            .strip_prefix(&self.prefix)?
            .strip_prefix("-o")?
            .parse()
            .ok()
    }
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("the bench renders valid header values")
}

/// A structured `stock.added` event for `sku-{sku}`, keyed by the SKU.
pub fn stock_added(prefix: &str, sku: u32, quantity: u64) -> String {
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{prefix}-stock-{sku}\",\"source\":\"{SOURCE}\",\
         \"type\":\"{STOCK_ADDED}\",\"partitionkey\":\"sku-{sku}\",\
         \"datacontenttype\":\"application/json\",\"data\":{{\"sku\":\"sku-{sku}\",\"quantity\":{quantity}}}}}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    fn payload(mode: Mode, body: Body) -> Payload {
        Payload {
            mode,
            body,
            prefix: "r1".into(),
            authority: "127.0.0.1:1".into(),
            path: "/events".into(),
        }
    }

    async fn decoded(payload: &Payload, seq: u64) -> evhost::ingress::binding::Decoded {
        let (parts, body) = payload.request(seq).into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        evhost::ingress::binding::decode(&parts.headers, &bytes).expect("a valid request")
    }

    #[tokio::test]
    async fn every_mode_renders_events_the_host_accepts() {
        let counter = Body::Counter {
            ty: "bench.ack.v1".into(),
        };
        let binary = decoded(&payload(Mode::Binary, counter.clone()), 7).await;
        assert_eq!(binary.events.len(), 1);
        assert_eq!(binary.events[0].id(), "r1-7");
        let structured = decoded(&payload(Mode::Structured, counter.clone()), 7).await;
        assert_eq!(structured.events[0].id(), "r1-7");
        assert_eq!(structured.events[0].data(), Some(&b"{\"n\":7}"[..]));
        let batch = decoded(&payload(Mode::Batch(3), counter), 2).await;
        let ids: Vec<_> = batch.events.iter().map(|e| e.id()).collect();
        assert_eq!(ids, ["r1-6", "r1-7", "r1-8"]);

        let orders = payload(Mode::Binary, Body::PlaceOrder { skus: 4 });
        let order = decoded(&orders, 5).await;
        assert_eq!(order.events[0].subject(), Some("r1-o5"));
        assert_eq!(orders.order_number_of("r1-o5"), Some(5));
        assert_eq!(orders.number_of("r1-5"), Some(5));

        let with = Body::CounterWith {
            ty: "bench.up.v3".into(),
            fields: "\"steps\":[\"bench.up.v1\"],\"version_seen\":1".into(),
        };
        let binary = decoded(&payload(Mode::Binary, with), 4).await;
        assert_eq!(
            binary.events[0].data(),
            Some(&b"{\"n\":4,\"steps\":[\"bench.up.v1\"],\"version_seen\":1}"[..])
        );

        let keyed = Body::Keyed {
            ty: "bench.ack.v1".into(),
            keys: 10,
        };
        let binary = decoded(&payload(Mode::Binary, keyed.clone()), 13).await;
        assert_eq!(binary.events[0].extension("partitionkey"), Some("k3"));
        let structured = decoded(&payload(Mode::Structured, keyed), 13).await;
        assert_eq!(structured.events[0].extension("partitionkey"), Some("k3"));
    }

    #[test]
    fn stock_is_a_valid_structured_event() {
        let text = stock_added("r1", 3, 10);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let decoded = evhost::ingress::binding::decode(&headers, text.as_bytes()).unwrap();
        assert_eq!(decoded.events[0].extension("partitionkey"), Some("sku-3"));
    }
}
