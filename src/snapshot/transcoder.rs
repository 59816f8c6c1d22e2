//! A route's transcoding, compiled (SPEC §9): the bindings of its `grpc_transcode`, fixed
//! when read from a descriptor set, replaced whenever reflection reads the upstream's
//! services again (see [`super::reflector`]).

use super::reflector::Reflected;
use crate::resource::transcode::GrpcTranscode;
use crate::resource::FieldError;
use crate::transcode::bindings::Bindings;
use arc_swap::ArcSwapOption;
use prost_reflect::DescriptorPool;
use std::sync::{Arc, Mutex};

/// A route's transcoding: its bindings, fixed when read from a descriptor set, replaced
/// whenever reflection reads the upstream's services again.
#[derive(Debug)]
pub struct Transcoder {
    pub spec: GrpcTranscode,
    bindings: ArcSwapOption<Bindings>,
    /// Where reading the descriptors by reflection stands (only its service touches it).
    pub(super) reflected: Mutex<Reflected>,
}

impl Transcoder {
    /// Builds the route's transcoding. With `descriptors`, the set is read and every
    /// binding resolved now, each error named; with `reflection`, the bindings come later,
    /// from the reflection service, and a previous version's are kept meanwhile.
    pub fn compile(
        spec: &GrpcTranscode,
        previous: Option<&Transcoder>,
    ) -> Result<Transcoder, Vec<FieldError>> {
        let bindings = match spec.resolve()? {
            Some(bindings) => Some(Arc::new(bindings)),
            // Bindings read for the same services and rules stay until they are read again;
            // others would serve rules the operator has just removed.
            None => previous
                .filter(|p| p.spec == *spec)
                .and_then(|p| p.bindings.load_full()),
        };
        Ok(Transcoder {
            spec: spec.clone(),
            bindings: ArcSwapOption::new(bindings),
            reflected: Default::default(),
        })
    }

    /// The bindings in force; `None` while reflection has not answered yet.
    pub fn bindings(&self) -> Option<Arc<Bindings>> {
        self.bindings.load_full()
    }

    /// Resolves descriptors read by reflection and puts their bindings in force.
    pub fn learn(&self, pool: &DescriptorPool) -> Result<(), Vec<FieldError>> {
        let bindings = self.spec.bind(pool)?;
        self.bindings.store(Some(Arc::new(bindings)));
        Ok(())
    }
}
