//! Loading plugins from disk.
//!
//! The order matters for safety: open the library, find the one exported
//! declaration, check its magic and fingerprint — plain C data — and only
//! then call anything in it. Libraries are never unloaded: plugin code may
//! still be referenced by handlers, loops and `tracing` callsites.

use gestor_sdk::logging::level_to_u8;
use gestor_sdk::plugin::{AbiFingerprint, Plugin, PluginDeclaration, ABI_MAGIC};
use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};

/// Why a plugin could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin {path}: not found")]
    NotFound { path: PathBuf },
    #[error("plugin {path}: not a loadable library: {reason}")]
    NotALibrary { path: PathBuf, reason: String },
    #[error("plugin {path}: not a gestor plugin (no GESTOR_PLUGIN symbol)")]
    NotAPlugin { path: PathBuf },
    #[error("plugin {path}: incompatible declaration layout (magic {found:#x}, host expects {expected:#x})")]
    BadMagic {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("plugin {path}: incompatible ABI fingerprint: plugin [{plugin}] vs host [{host}]; rebuild it against this SDK with the same toolchain and profile")]
    Fingerprint {
        path: PathBuf,
        plugin: String,
        host: String,
    },
    #[error("plugin {path}: constructor panicked")]
    ConstructorPanicked { path: PathBuf },
}

/// A plugin ready to start. Its library stays mapped for the life of the process.
pub struct LoadedPlugin {
    pub name: String,
    pub path: PathBuf,
    pub plugin: Box<dyn Plugin>,
}

/// Resolve a configured plugin entry: a path, or a name looked up in `dir`.
pub fn resolve(entry: &str, dir: &Path) -> PathBuf {
    let looks_like_path = entry.contains('/') || entry.ends_with(std::env::consts::DLL_SUFFIX);
    if looks_like_path {
        PathBuf::from(entry)
    } else {
        dir.join(format!(
            "{}{}{}",
            std::env::consts::DLL_PREFIX,
            entry,
            std::env::consts::DLL_SUFFIX
        ))
    }
}

unsafe fn c_str(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

unsafe fn same_fingerprint(a: &AbiFingerprint, b: &AbiFingerprint) -> bool {
    a.magic == b.magic
        && c_str(a.rustc) == c_str(b.rustc)
        && c_str(a.sdk_version) == c_str(b.sdk_version)
        && c_str(a.target) == c_str(b.target)
        && c_str(a.profile) == c_str(b.profile)
        && c_str(a.deps) == c_str(b.deps)
}

/// Load the plugin at `path`: check, hook up logging, construct.
pub fn load(path: &Path) -> Result<LoadedPlugin, LoadError> {
    if !path.exists() {
        return Err(LoadError::NotFound {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: loading runs the library's initialisers; we only load files the
    // operator configured. Everything after is guarded by the checks below.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::NotALibrary {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    // Never unloaded: handlers, loops and tracing callsites point into it.
    let library: &'static libloading::Library = Box::leak(Box::new(library));

    let declaration: &'static PluginDeclaration = unsafe {
        let symbol = library
            .get::<*const PluginDeclaration>(b"GESTOR_PLUGIN\0")
            .map_err(|_| LoadError::NotAPlugin {
                path: path.to_path_buf(),
            })?;
        let ptr: *const PluginDeclaration = *symbol;
        if ptr.is_null() {
            return Err(LoadError::NotAPlugin {
                path: path.to_path_buf(),
            });
        }
        &*ptr
    };

    // The magic is read first and alone: if it differs, nothing else in the
    // declaration can be trusted to have this layout.
    let magic = declaration.fingerprint.magic;
    if magic != ABI_MAGIC {
        return Err(LoadError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: ABI_MAGIC,
        });
    }
    let host = AbiFingerprint::CURRENT;
    unsafe {
        if !same_fingerprint(&declaration.fingerprint, &host) {
            return Err(LoadError::Fingerprint {
                path: path.to_path_buf(),
                plugin: declaration.fingerprint.describe(),
                host: host.describe(),
            });
        }
    }
    let name = unsafe { c_str(declaration.name) };

    // Hook the plugin's tracing up to ours before it can log anything.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let level = level_to_u8(tracing::level_filters::LevelFilter::current());
    unsafe {
        (declaration.install_logging)(
            &dispatch as *const tracing::Dispatch as *const c_void,
            level,
        )
    };

    let raw = unsafe { (declaration.create)() };
    if raw.is_null() {
        return Err(LoadError::ConstructorPanicked {
            path: path.to_path_buf(),
        });
    }
    // SAFETY: `create` returns Box<Box<dyn Plugin>> (see declare_plugin!), and
    // the fingerprint guarantees both sides agree on its layout.
    let plugin: Box<dyn Plugin> = unsafe { *Box::from_raw(raw as *mut Box<dyn Plugin>) };
    tracing::info!(plugin = %name, path = %path.display(), "plugin loaded");
    Ok(LoadedPlugin {
        name,
        path: path.to_path_buf(),
        plugin,
    })
}
