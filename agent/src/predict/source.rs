//! Where the forecaster's model comes from, in order of preference:
//!
//! 1. the fleet's signed model update (verified by `publish`, kept under the state dir);
//! 2. `predict.model`: a path to an `.onnx` file, reloaded when it changes, or `"shipped"`,
//!    the model built into this binary from `models/forecast.onnx`;
//! 3. none (`predict.model = "none"`, or every source failed): the fallback baseline.
//!
//! Every failure is kept as a reason the status shows; the stage never stops forecasting.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    onnx::{LoadError, Model},
    runtime::Runtime,
    schema::ModelKind,
};

/// The models built into this binary.
pub mod shipped {
    include!(concat!(env!("OUT_DIR"), "/shipped_models.rs"));
}

/// `predict.model` / `predict.request_model`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSetting {
    Shipped,
    None,
    File(PathBuf),
}

impl ModelSetting {
    pub fn parse(s: &str) -> ModelSetting {
        match s {
            "shipped" | "" => ModelSetting::Shipped,
            "none" => ModelSetting::None,
            p => ModelSetting::File(PathBuf::from(p)),
        }
    }
}

/// Identity of a file's current contents, cheaply: modification time, length, inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(Option<SystemTime>, u64, u64);

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(p)
        .ok()
        .map(|m| Stamp(m.modified().ok(), m.len(), m.ino()))
}

/// Where the model in use came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Fleet,
    File(PathBuf),
    Shipped,
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Fleet => "fleet".into(),
            Origin::File(p) => p.display().to_string(),
            Origin::Shipped => "shipped".into(),
        }
    }
}

/// The model sources of one kind of model.
pub struct Sources {
    kind: ModelKind,
    setting: ModelSetting,
    shipped: Option<&'static [u8]>,
    runtime: Box<dyn Runtime>,
    stamp: Option<Stamp>,
    /// The fleet's model is in use (a file change does not replace it).
    fleet_active: bool,
}

impl Sources {
    pub fn new(
        kind: ModelKind,
        setting: ModelSetting,
        shipped: Option<&'static [u8]>,
        runtime: Box<dyn Runtime>,
    ) -> Sources {
        Sources {
            kind,
            setting,
            shipped,
            runtime,
            stamp: None,
            fleet_active: false,
        }
    }

    pub fn runtime(&self) -> &dyn Runtime {
        self.runtime.as_ref()
    }

    /// Loads the fleet's model (`origin` names it, e.g. its store file).
    pub fn fleet(&mut self, origin: &str, bytes: &[u8]) -> Result<(Model, Origin), LoadError> {
        let m = Model::load(origin, bytes, self.kind, self.runtime.as_ref())?;
        self.fleet_active = true;
        Ok((m, Origin::Fleet))
    }

    /// The configured model: the file or the shipped one. `Ok(None)` for `none`.
    pub fn configured(&mut self) -> Result<Option<(Model, Origin)>, LoadError> {
        match &self.setting {
            ModelSetting::None => Ok(None),
            ModelSetting::Shipped => match self.shipped {
                None => Err(LoadError::Read {
                    origin: "the shipped model".into(),
                    message: format!(
                        "this build has none (models/{}.onnx was absent when it was built{})",
                        self.kind.name(),
                        if cfg!(feature = "onnx") {
                            ""
                        } else {
                            ", or the model runtime was left out"
                        }
                    ),
                }),
                Some(b) => {
                    let origin = format!("shipped {}.onnx", self.kind.name());
                    Model::load(&origin, b, self.kind, self.runtime.as_ref())
                        .map(|m| Some((m, Origin::Shipped)))
                }
            },
            ModelSetting::File(p) => {
                let p = p.clone();
                self.stamp = stamp(&p);
                let origin = p.display().to_string();
                let bytes = fs::read(&p).map_err(|e| LoadError::Read {
                    origin: origin.clone(),
                    message: format!("{e}: check predict.model"),
                })?;
                Model::load(&origin, &bytes, self.kind, self.runtime.as_ref())
                    .map(|m| Some((m, Origin::File(p))))
            }
        }
    }

    /// Whether the configured file changed since it was last read (and no fleet model is
    /// in use): then [`Sources::configured`] should be called again.
    pub fn changed(&mut self) -> bool {
        let ModelSetting::File(p) = &self.setting else {
            return false;
        };
        if self.fleet_active {
            return false;
        }
        let now = stamp(p);
        if now != self.stamp {
            self.stamp = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::predict::{runtime::NoRuntime, schema::tests::fixture};

    #[test]
    fn settings_parse() {
        assert_eq!(ModelSetting::parse("shipped"), ModelSetting::Shipped);
        assert_eq!(ModelSetting::parse("none"), ModelSetting::None);
        assert_eq!(
            ModelSetting::parse("/m/f.onnx"),
            ModelSetting::File("/m/f.onnx".into())
        );
    }

    #[test]
    fn a_missing_file_or_a_build_without_a_runtime_is_a_clear_error() {
        let mut s = Sources::new(
            ModelKind::Forecast,
            ModelSetting::File("/nonexistent/forecast.onnx".into()),
            None,
            Box::new(NoRuntime),
        );
        let e = s.configured().err().unwrap().to_string();
        assert!(
            e.contains("/nonexistent/forecast.onnx") && e.contains("predict.model"),
            "{e}"
        );
        let mut s = Sources::new(
            ModelKind::Forecast,
            ModelSetting::File(fixture("forecast_fixture.onnx")),
            None,
            Box::new(NoRuntime),
        );
        let e = s.configured().err().unwrap().to_string();
        assert!(
            e.contains("forecast_fixture.onnx") && e.contains("`onnx`"),
            "{e}"
        );
        let mut s = Sources::new(
            ModelKind::Forecast,
            ModelSetting::Shipped,
            None,
            Box::new(NoRuntime),
        );
        let e = s.configured().err().unwrap().to_string();
        assert!(e.contains("models/forecast.onnx was absent"), "{e}");
        let mut s = Sources::new(
            ModelKind::Forecast,
            ModelSetting::None,
            None,
            Box::new(NoRuntime),
        );
        assert!(s.configured().unwrap().is_none());
    }

    #[test]
    fn a_changed_file_is_noticed_unless_the_fleet_model_rules() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.onnx");
        fs::write(&p, b"one").unwrap();
        let mut s = Sources::new(
            ModelKind::Forecast,
            ModelSetting::File(p.clone()),
            None,
            Box::new(NoRuntime),
        );
        let _ = s.configured();
        assert!(!s.changed());
        fs::write(&p, b"two, longer").unwrap();
        assert!(s.changed());
        assert!(!s.changed());
        s.fleet_active = true;
        fs::write(&p, b"three").unwrap();
        assert!(!s.changed());
    }
}
