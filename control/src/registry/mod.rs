//! The API's storage semantics, free of HTTP: what get, list, create,
//! update, patch, delete and deletecollection (and the `binding` and
//! `scale` subresources) do to the store, with Kubernetes' semantics —
//! resourceVersion preconditions, server-set metadata, defaults,
//! validation, admission, allocation, finalizers and graceful deletion.
//! What differs between kinds is each kind's [`strategy::Strategy`]. The
//! HTTP layer (`api::rest`) turns requests into these calls and their
//! results into responses.

mod bootstrap;
mod namespace;
mod node;
mod pod;
mod scalable;
mod service;
pub mod strategy;

use std::sync::Arc;

use serde_json::{json, Value};

pub use bootstrap::{advertised_endpoint, bootstrap};
pub use namespace::SYSTEM_NAMESPACES;

use crate::alloc::{Allocator, Claims};
use crate::auth::User;
use crate::error::ApiError;
use crate::object;
use crate::patch::{self, PatchType};
use crate::prepare;
use crate::resources::Resource;
use crate::selector::Selector;
use crate::store::{Record, Store, StoreError};
use crate::validate::{validate, FieldValidation};
use strategy::{for_kind, Strategy};

/// Attempts of a patch or scale that races other writers.
const PATCH_ATTEMPTS: usize = 5;

/// The store and allocator the API serves.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    alloc: Allocator,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// What a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    /// The kind.
    pub resource: &'static Resource,
    /// The namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// The object, unless the request is about a collection.
    pub name: Option<String>,
    /// The subresource (`status`, `scale`, `binding`).
    pub sub: Option<String>,
}

impl Target {
    /// The object's name ("" for a collection).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The object's key in the store.
    pub fn key(&self) -> String {
        self.resource.key(self.namespace.as_deref(), self.name())
    }

    /// The key prefix of the collection.
    pub fn prefix(&self) -> String {
        self.resource.scope_prefix(self.namespace.as_deref())
    }

    /// The same object without a subresource.
    fn main(&self) -> Target {
        Target {
            sub: None,
            ..self.clone()
        }
    }

    /// Who owns allocations made for the object `name`.
    fn owner(&self, name: &str) -> String {
        match &self.namespace {
            Some(ns) if self.resource.namespaced => {
                format!("{}/{ns}/{name}", self.resource.plural)
            }
            _ => format!("{}/{name}", self.resource.plural),
        }
    }

    fn store_error(&self, e: StoreError) -> ApiError {
        ApiError::from_store(self.resource.plural, self.name(), e)
    }

    fn strategy(&self) -> &'static dyn Strategy {
        for_kind(self.resource.kind)
    }
}

/// How a write is done.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Check everything, store nothing (`dryRun=All`).
    pub dry_run: bool,
    /// What unknown fields get (`fieldValidation`).
    pub fields: FieldValidation,
}

/// What a delete asks for (query and DeleteOptions body together).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Check everything, delete nothing (`dryRun=All`).
    pub dry_run: bool,
    /// `gracePeriodSeconds`.
    pub grace: Option<i64>,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `propagationPolicy` (or the older `orphanDependents`): what
    /// happens to the objects the deleted one owns.
    pub propagation: Propagation,
}

/// What deleting an object does to its dependents (the objects whose
/// ownerReferences name it); the garbage collector carries it out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes at once; its dependents are deleted afterwards.
    #[default]
    Background,
    /// The object stays (`foregroundDeletion` finalizer) until the
    /// dependents that block its deletion are gone.
    Foreground,
    /// The object stays (`orphan` finalizer) until its dependents no
    /// longer name it; they are kept.
    Orphan,
}

/// The finalizer of an object deleted in the foreground.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of an object whose dependents are orphaned.
pub const ORPHAN_FINALIZER: &str = "orphan";

impl Propagation {
    /// Parses a `propagationPolicy`.
    pub fn parse(policy: &str) -> Result<Self, ApiError> {
        match policy {
            "Background" => Ok(Self::Background),
            "Foreground" => Ok(Self::Foreground),
            "Orphan" => Ok(Self::Orphan),
            other => Err(ApiError::invalid(
                "DeleteOptions",
                "",
                &[(
                    "propagationPolicy".into(),
                    format!("Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                )],
            )),
        }
    }

    /// The finalizer that holds the object until the garbage collector
    /// has dealt with its dependents.
    fn finalizer(self) -> Option<&'static str> {
        match self {
            Self::Background => None,
            Self::Foreground => Some(FOREGROUND_FINALIZER),
            Self::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

/// A written object and the warnings for the client.
#[derive(Debug)]
pub struct Written {
    /// The object as stored (or as it would be, on a dry run).
    pub object: Value,
    /// Warnings (dropped unknown fields).
    pub warnings: Vec<String>,
}

/// Who asks about what.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The authenticated user (admission depends on it).
    pub user: &'a User,
    /// The object or collection.
    pub target: &'a Target,
}

impl Registry {
    /// The registry over `store`, allocating with `alloc`.
    pub fn new(store: Arc<dyn Store>, alloc: Allocator) -> Self {
        Registry { store, alloc }
    }

    /// The store (watches and health read it directly).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn read(&self, target: &Target) -> Result<(Record, Value), ApiError> {
        let record = self
            .store
            .get(&target.key())
            .await
            .map_err(|e| target.store_error(e))?
            .ok_or_else(|| ApiError::not_found(target.resource.plural, target.name()))?;
        let obj = object::from_record(&record)?;
        Ok((record, obj))
    }

    /// The object (or its Scale).
    pub async fn get(&self, target: &Target) -> Result<Value, ApiError> {
        let (_, obj) = self.read(target).await?;
        if target.sub.as_deref() == Some("scale") {
            return self.scale_of(target, &obj);
        }
        Ok(obj)
    }

    fn scale_of(&self, target: &Target, obj: &Value) -> Result<Value, ApiError> {
        target
            .strategy()
            .scale(obj)
            .ok_or_else(|| ApiError::internal(format!("{} has no scale", target.resource.kind)))
    }

    /// The objects of the collection the selectors match, and the store's
    /// revision they were read at.
    pub async fn list(
        &self,
        target: &Target,
        labels: &Selector,
        fields: &Selector,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let (records, revision) = self
            .store
            .list(&target.prefix())
            .await
            .map_err(|e| target.store_error(e))?;
        let mut items = Vec::with_capacity(records.len());
        for record in &records {
            let obj = object::from_record(record)?;
            if labels.matches_labels(&obj) && fields.matches_fields(&obj) {
                items.push(obj);
            }
        }
        Ok((items, revision))
    }

    async fn namespace_must_exist(&self, target: &Target, obj: &Value) -> Result<(), ApiError> {
        if !target.resource.namespaced {
            return Ok(());
        }
        let ns = object::namespace(obj).unwrap_or("default");
        let record = self
            .store
            .get(&format!("/registry/namespaces/{ns}"))
            .await
            .map_err(|e| target.store_error(e))?;
        match record {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(r)
                if object::from_record(&r)?
                    .pointer("/metadata/deletionTimestamp")
                    .is_some() =>
            {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Creates the object in `body`.
    pub async fn create(
        &self,
        caller: Caller<'_>,
        body: &[u8],
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        let target = caller.target;
        let resource = target.resource;
        let (mut obj, warnings) =
            prepare::for_create(resource, body, target.namespace.as_deref(), options.fields)?;
        let strategy = target.strategy();
        strategy
            .admit(self, caller.user, target.sub.as_deref(), None, &obj)
            .await?;
        self.namespace_must_exist(target, &obj).await?;
        let name = object::name(&obj).unwrap_or_default().to_string();
        let claims = self.allocate(target, &mut obj, None, &name).await?;
        if options.dry_run {
            self.alloc.release(claims).await;
            return Ok(Written {
                object: obj,
                warnings,
            });
        }
        let key = resource.key(object::namespace(&obj), &name);
        let stored = self.store.create(&key, object::to_stored(&obj)?).await;
        let record = match stored {
            Ok(record) => record,
            Err(e) => {
                self.alloc.release(claims).await;
                return Err(ApiError::from_store(resource.plural, &name, e));
            }
        };
        Ok(Written {
            object: object::from_record(&record)?,
            warnings,
        })
    }

    /// Allocates for writes of the object itself (not its subresources).
    async fn allocate(
        &self,
        target: &Target,
        obj: &mut Value,
        old: Option<&Value>,
        name: &str,
    ) -> Result<Claims, ApiError> {
        if target.sub.is_some() {
            return Ok(Claims::default());
        }
        target
            .strategy()
            .allocate(self, obj, old, &target.owner(name))
            .await
    }

    /// Replaces the object (or its status, or its Scale) with `body`.
    pub async fn update(
        &self,
        caller: Caller<'_>,
        body: &[u8],
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        let target = caller.target;
        let new = prepare::parse_body(body)?;
        if target.sub.as_deref() == Some("scale") {
            return self.write_scale(caller, options, |_| Ok(new.clone())).await;
        }
        let expected = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(object::parse_resource_version)
            .transpose()?;
        if let Some(body_name) = object::name(&new) {
            if body_name != target.name() {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({})",
                    target.name()
                )));
            }
        }
        let (record, old) = self.read(target).await?;
        self.write(caller, options, &record, &old, new, expected)
            .await
    }

    /// Stores `new` over `old` (read at `record`), `expected` being the
    /// client's resourceVersion if it sent one.
    async fn write(
        &self,
        caller: Caller<'_>,
        options: WriteOptions,
        record: &Record,
        old: &Value,
        mut new: Value,
        expected: Option<u64>,
    ) -> Result<Written, ApiError> {
        let target = caller.target;
        let resource = target.resource;
        let strategy = target.strategy();
        object::check_type(resource, &mut new)?;
        object::check_namespace(resource, &mut new, target.namespace.as_deref())?;
        object::prepare_update(resource, old, &mut new, target.sub.as_deref())?;
        strategy
            .admit(self, caller.user, target.sub.as_deref(), Some(old), &new)
            .await?;
        let warnings = validate(resource, &mut new, Some(old), options.fields)?;
        if let Some(expected) = expected {
            if expected != record.mod_revision {
                return Err(ApiError::conflict(resource.plural, target.name()));
            }
        }
        let claims = self
            .allocate(target, &mut new, Some(old), target.name())
            .await?;
        if options.dry_run {
            self.alloc.release(claims).await;
            return Ok(Written {
                object: new,
                warnings,
            });
        }
        // An object being deleted goes once its last finalizer is removed.
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty())
            && !strategy.delete_waits(&new, None);
        if finalized {
            self.alloc.release(claims).await;
            let deleted = self.remove(target, record, old).await?;
            return Ok(Written {
                object: deleted,
                warnings,
            });
        }
        let stored = object::to_stored(&new)?;
        if *stored == *record.value {
            // Nothing changed: no write, no new resourceVersion.
            return Ok(Written {
                object: old.clone(),
                warnings,
            });
        }
        let result = self
            .store
            .update(&record.key, stored, Some(record.mod_revision))
            .await;
        match result {
            Ok(r) => {
                // Only now that the new object is stored may what the old
                // one held (and the new one does not) go back.
                if target.sub.is_none() {
                    strategy.release_replaced(self, old, &new).await;
                }
                Ok(Written {
                    object: object::from_record(&r)?,
                    warnings,
                })
            }
            Err(e) => {
                self.alloc.release(claims).await;
                Err(target.store_error(e))
            }
        }
    }

    /// Applies a patch of type `kind` to the object (or its status, or its
    /// Scale), retrying when other writers race it.
    pub async fn patch(
        &self,
        caller: Caller<'_>,
        body: &[u8],
        kind: PatchType,
        options: WriteOptions,
    ) -> Result<Written, ApiError> {
        let target = caller.target;
        if target.sub.as_deref() == Some("scale") {
            return self
                .write_scale(caller, options, |scale| patch::apply(scale, body, kind))
                .await;
        }
        for _ in 0..PATCH_ATTEMPTS {
            let (record, old) = self.read(target).await?;
            let new = patch::apply(&old, body, kind)?;
            // A resourceVersion in the patch is a precondition; otherwise
            // the patch applies to whatever is current (retried on races).
            let sent_rv = new
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|rv| {
                    *rv != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                })
                .map(object::parse_resource_version)
                .transpose()?;
            match self
                .write(caller, options, &record, &old, new, sent_rv)
                .await
            {
                Err(e) if e.reason == "Conflict" && sent_rv.is_none() => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(target.resource.plural, target.name()))
    }

    /// Reads the Scale of the object, lets `change` produce the new Scale,
    /// and writes its replicas into the object; returns the new Scale.
    async fn write_scale(
        &self,
        caller: Caller<'_>,
        options: WriteOptions,
        change: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Written, ApiError> {
        let target = caller.target;
        let main = target.main();
        let on_main = Caller {
            target: &main,
            ..caller
        };
        for _ in 0..PATCH_ATTEMPTS {
            let (record, old) = self.read(target).await?;
            let scale = self.scale_of(target, &old)?;
            let new_scale = change(&scale)?;
            let replicas = new_scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::bad_request("the Scale has no spec.replicas"))?;
            let expected = new_scale
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|rv| !rv.is_empty())
                .map(object::parse_resource_version)
                .transpose()?;
            if let Some(expected) = expected {
                if expected != record.mod_revision {
                    return Err(ApiError::conflict(target.resource.plural, target.name()));
                }
            }
            let mut new = old.clone();
            new["spec"]["replicas"] = json!(replicas);
            match self.write(on_main, options, &record, &old, new, None).await {
                Ok(written) => {
                    let (_, current) = self.read(target).await?;
                    return Ok(Written {
                        object: self.scale_of(target, &current)?,
                        warnings: written.warnings,
                    });
                }
                Err(e) if e.reason == "Conflict" && expected.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(target.resource.plural, target.name()))
    }

    /// `POST pods/<name>/binding`: assigns the pod to a node.
    pub async fn bind(&self, target: &Target, body: &[u8]) -> Result<(), ApiError> {
        let binding = prepare::parse_body(body)?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    target.name(),
                    &[("target.name".into(), "Required value".into())],
                )
            })?
            .to_string();
        let (record, old) = self.read(target).await?;
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict_because(format!(
                "pod {} is being deleted and cannot be bound",
                target.name()
            )));
        }
        if let Some(current) = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_because(format!(
                "pod {} is already assigned to node \"{current}\"",
                target.name()
            )));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        let stored = object::to_stored(&new)?;
        self.store
            .update(&record.key, stored, Some(record.mod_revision))
            .await
            .map_err(|e| target.store_error(e))?;
        Ok(())
    }

    /// Deletes the object: at once, or by marking it deleted when
    /// finalizers or its node must finish the delete.
    pub async fn delete(
        &self,
        target: &Target,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let preconditions = options.uid.is_some() || options.resource_version.is_some();
        for _ in 0..PATCH_ATTEMPTS {
            match self.delete_once(target, options).await {
                // Another writer came between the read and the delete:
                // without preconditions, the delete applies to what is now.
                Err(e) if e.reason == "Conflict" && !preconditions => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(target.resource.plural, target.name()))
    }

    async fn delete_once(
        &self,
        target: &Target,
        options: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let (record, old) = self.read(target).await?;
        let conflict = || ApiError::conflict(target.resource.plural, target.name());
        if let Some(uid) = &options.uid {
            if old.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return Err(conflict());
            }
        }
        if let Some(rv) = &options.resource_version {
            if object::parse_resource_version(rv)? != record.mod_revision {
                return Err(conflict());
            }
        }
        let strategy = target.strategy();
        strategy.check_delete(target.name())?;
        if options.dry_run {
            return Ok(old);
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let graceful = strategy.delete_waits(&old, options.grace);
        let cascade = options.propagation.finalizer();
        if has_finalizers || graceful || cascade.is_some() {
            return self
                .mark_deleted(target, &record, old, options.grace, cascade)
                .await;
        }
        self.remove(target, &record, &old).await
    }

    /// Sets deletionTimestamp (and a grace period, for kinds with one)
    /// instead of removing, adding `cascade` to the finalizers: finalizers
    /// or the pod's node finish the delete.
    async fn mark_deleted(
        &self,
        target: &Target,
        record: &Record,
        old: Value,
        grace: Option<i64>,
        cascade: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut new = old.clone();
        if let Some(finalizer) = cascade {
            let finalizers = &mut new["metadata"]["finalizers"];
            if !finalizers.is_array() {
                *finalizers = json!([]);
            }
            if let Some(list) = finalizers.as_array_mut() {
                // One cascade at a time: a later delete's policy wins.
                list.retain(|f| f != FOREGROUND_FINALIZER && f != ORPHAN_FINALIZER);
                list.push(json!(finalizer));
            }
        }
        if old.pointer("/metadata/deletionTimestamp").is_none() {
            target.strategy().mark_deleted(&mut new);
            let mut deadline = jiff::Timestamp::now();
            if let Some(grace) = target.strategy().grace_period(&new, grace) {
                new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                deadline = deadline
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or(deadline);
            }
            new["metadata"]["deletionTimestamp"] =
                json!(deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        } else if new == old {
            return Ok(old);
        }
        let updated = self
            .store
            .update(
                &record.key,
                object::to_stored(&new)?,
                Some(record.mod_revision),
            )
            .await
            .map_err(|e| target.store_error(e))?;
        object::from_record(&updated)
    }

    /// Removes the object and releases what was allocated for it.
    async fn remove(
        &self,
        target: &Target,
        record: &Record,
        old: &Value,
    ) -> Result<Value, ApiError> {
        let strategy = target.strategy();
        strategy.before_remove(self, target.name()).await?;
        let deleted = self
            .store
            .delete(&record.key, Some(record.mod_revision))
            .await
            .map_err(|e| target.store_error(e))?;
        strategy.release(self, old).await;
        object::from_record(&deleted)
    }

    /// Deletes the objects of the collection the selectors match; returns
    /// them and the store's revision afterwards.
    pub async fn delete_collection(
        &self,
        target: &Target,
        labels: &Selector,
        fields: &Selector,
        options: &DeleteOptions,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let (matching, _) = self.list(target, labels, fields).await?;
        let mut deleted = Vec::new();
        for obj in matching {
            let one = Target {
                resource: target.resource,
                namespace: object::namespace(&obj).map(String::from),
                name: object::name(&obj).map(String::from),
                sub: None,
            };
            let each = DeleteOptions {
                dry_run: options.dry_run,
                grace: options.grace,
                propagation: options.propagation,
                ..DeleteOptions::default()
            };
            match self.delete(&one, &each).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => deleted.push(obj),
                Err(e) => return Err(e),
            }
        }
        let revision = self
            .store
            .revision()
            .await
            .map_err(|e| target.store_error(e))?;
        Ok((deleted, revision))
    }
}
