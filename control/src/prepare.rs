//! What happens to a request body before anything is stored: decoding,
//! type and namespace checks, server-set metadata, defaults and
//! validation. HTTP-free, so the API's handlers and the fuzz harnesses run
//! the same steps.

use serde_json::Value;

use crate::defaults;
use crate::error::ApiError;
use crate::object;
use crate::resources::Resource;
use crate::validate::{validate, FieldValidation};

/// Decodes a JSON request body.
pub fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request has no body"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Turns the body of a create request for `resource` (in namespace
/// `path_namespace` of the URL, if any) into the object to store, with
/// the warnings for the client: everything but admission, allocation and
/// the write itself.
pub fn for_create(
    resource: &Resource,
    body: &[u8],
    path_namespace: Option<&str>,
    fields: FieldValidation,
) -> Result<(Value, Vec<String>), ApiError> {
    let mut obj = parse_body(body)?;
    object::check_type(resource, &mut obj)?;
    object::check_namespace(resource, &mut obj, path_namespace)?;
    object::prepare_create(resource, &mut obj)?;
    defaults::apply(resource.kind, &mut obj);
    let warnings = validate(resource, &mut obj, None, fields)?;
    Ok((obj, warnings))
}
