//! Turns whatever the AWS SDK returned into the contract's [`ErrorInfo`]: the modeled code when
//! Bedrock sent one, the HTTP status when it did not (a bare 503 from a load balancer), and the
//! transport failures (timeouts, refused connections) the SDK reports without a response.

use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_smithy_types::event_stream::RawMessage;
use backstop_core::contract::{ErrorInfo, ErrorKind};
use backstop_resilience::error::BoxError;

/// The HTTP status of a raw response, where there is one.
pub trait RawStatus {
    /// The HTTP status, if the error came with a response.
    fn status(&self) -> Option<u16>;
    /// The server's wait hint in milliseconds, if it sent one.
    fn retry_after_ms(&self) -> Option<u64>;
}

impl RawStatus for HttpResponse {
    fn status(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }

    fn retry_after_ms(&self) -> Option<u64> {
        let headers = self.headers();
        retry_after_ms(
            |name| headers.get(name).map(str::to_string),
            std::time::SystemTime::now(),
        )
    }
}

/// The longest wait hint taken from a response: a day. (The guardrails cap any wait a policy
/// decides far below that; this only keeps the arithmetic sane.)
const MAX_HINT_MS: u64 = 86_400_000;

/// The server's wait hint in milliseconds, from every header that may carry one — Bedrock's
/// `x-amz-retry-after` (milliseconds), and, from proxies and gateways in front of it,
/// `Retry-After` (seconds or an HTTP date) and `x-amzn-RetryAfter` (read like `Retry-After`:
/// taking seconds for milliseconds would resend a thousand times too early). The largest wins.
pub fn retry_after_ms(
    header: impl Fn(&str) -> Option<String>,
    now: std::time::SystemTime,
) -> Option<u64> {
    let millis = header("x-amz-retry-after").and_then(|v| v.trim().parse::<u64>().ok());
    let http_style = |name: &str| {
        let value = header(name)?;
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(seconds.saturating_mul(1000));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(now).map_or(0, |d| d.as_millis() as u64))
    };
    [
        millis,
        http_style("retry-after"),
        http_style("x-amzn-retryafter"),
    ]
    .into_iter()
    .flatten()
    .max()
    .map(|ms| ms.min(MAX_HINT_MS))
}

/// Errors inside an event stream carry no HTTP status of their own.
impl RawStatus for RawMessage {
    fn status(&self) -> Option<u16> {
        None
    }

    fn retry_after_ms(&self) -> Option<u64> {
        None
    }
}

/// The class Bedrock's HTTP status implies when no error code came with it.
pub fn kind_from_status(status: u16) -> ErrorKind {
    match status {
        429 => ErrorKind::Throttling,
        502..=504 => ErrorKind::ServiceUnavailable,
        500 => ErrorKind::InternalServer,
        408 => ErrorKind::ModelTimeout,
        424 => ErrorKind::ModelError,
        403 | 401 => ErrorKind::AccessDenied,
        404 => ErrorKind::ResourceNotFound,
        409 => ErrorKind::Conflict,
        400 | 413 | 422 => ErrorKind::Validation,
        _ => ErrorKind::Unknown,
    }
}

/// Classifies one SDK error.
pub fn classify<E, R>(error: &SdkError<E, R>) -> ErrorInfo
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: RawStatus + std::fmt::Debug,
{
    let transport = |kind: ErrorKind, message: String| ErrorInfo {
        kind,
        code: String::new(),
        http_status: 0,
        message,
        retry_after_ms: None,
    };
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default().to_string();
            let status = service.raw().status();
            let mut kind = ErrorKind::from_code(&code);
            if kind == ErrorKind::Unknown {
                kind = status.map_or(ErrorKind::Unknown, kind_from_status);
            }
            ErrorInfo {
                kind,
                code,
                http_status: status.unwrap_or(kind.http_status()),
                message: service.err().message().unwrap_or_default().to_string(),
                retry_after_ms: service.raw().retry_after_ms(),
            }
        }
        SdkError::ResponseError(response) => {
            let status = response.raw().status();
            ErrorInfo {
                kind: status.map_or(ErrorKind::Unknown, kind_from_status),
                code: String::new(),
                http_status: status.unwrap_or(0),
                message: "the response could not be parsed".to_string(),
                retry_after_ms: response.raw().retry_after_ms(),
            }
        }
        SdkError::TimeoutError(_) => transport(ErrorKind::Timeout, "the attempt timed out".into()),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => transport(
            ErrorKind::Timeout,
            format!("{:?}", failure.as_connector_error()),
        ),
        SdkError::DispatchFailure(failure) => {
            let detail = failure
                .as_connector_error()
                .map(|e| e.to_string())
                .unwrap_or_default();
            transport(ErrorKind::Connection, detail)
        }
        // The request could not even be built: no retry can fix it.
        SdkError::ConstructionFailure(_) => transport(
            ErrorKind::Validation,
            "the request could not be constructed".into(),
        ),
        other => transport(ErrorKind::Unknown, other.to_string()),
    }
}

/// An SDK error as the loop takes it: its class, and the error itself.
pub fn sdk_failure<E, R>(
    error: aws_sdk_bedrockruntime::error::SdkError<E, R>,
) -> (ErrorInfo, BoxError)
where
    E: aws_sdk_bedrockruntime::error::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
    R: RawStatus + std::fmt::Debug + Send + Sync + 'static,
{
    (classify(&error), Box::new(error))
}

/// Errors inside an event stream name their type only in the `:exception-type` frame header,
/// which the SDK turns into the error's variant, not into its code: classify by the variant.
pub fn stream_failure(
    error: aws_sdk_bedrockruntime::error::SdkError<
        ConverseStreamOutputError,
        aws_smithy_types::event_stream::RawMessage,
    >,
) -> (ErrorInfo, BoxError) {
    let modeled = error.as_service_error().and_then(|e| match e {
        ConverseStreamOutputError::InternalServerException(_) => Some(ErrorKind::InternalServer),
        ConverseStreamOutputError::ModelStreamErrorException(_) => {
            Some(ErrorKind::ModelStreamError)
        }
        ConverseStreamOutputError::ServiceUnavailableException(_) => {
            Some(ErrorKind::ServiceUnavailable)
        }
        ConverseStreamOutputError::ThrottlingException(_) => Some(ErrorKind::Throttling),
        ConverseStreamOutputError::ValidationException(_) => Some(ErrorKind::Validation),
        _ => None,
    });
    let (mut info, source) = sdk_failure(error);
    if let Some(kind) = modeled.filter(|_| info.kind == ErrorKind::Unknown) {
        info.kind = kind;
        info.code = kind.code().to_string();
        info.http_status = kind.http_status();
    }
    (info, source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn every_wait_hint_counts_and_the_largest_wins() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_90_s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let long_ago = httpdate::fmt_http_date(now - Duration::from_secs(90));
        type Row<'a> = (&'a [(&'a str, &'a str)], Option<u64>);
        let table: [Row; 9] = [
            (&[], None),
            (&[("x-amz-retry-after", "1500")], Some(1_500)),
            (&[("retry-after", "3")], Some(3_000)),
            (&[("retry-after", in_90_s.as_str())], Some(90_000)),
            (&[("retry-after", long_ago.as_str())], Some(0)),
            (&[("x-amzn-retryafter", "2")], Some(2_000)),
            (
                &[
                    ("x-amz-retry-after", "1500"),
                    ("retry-after", "4"),
                    ("x-amzn-retryafter", "2"),
                ],
                Some(4_000),
            ),
            (
                &[("retry-after", "soon"), ("x-amz-retry-after", "-5")],
                None,
            ),
            (&[("retry-after", "99999999999")], Some(MAX_HINT_MS)),
        ];
        for (headers, expected) in table {
            let lookup = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            };
            assert_eq!(retry_after_ms(lookup, now), expected, "{headers:?}");
        }
    }
}
