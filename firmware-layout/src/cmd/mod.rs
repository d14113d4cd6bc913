//! One module per subcommand.

pub mod boot;
pub mod build;
pub mod inspect;
pub mod plan;

use outpost_layout::LayoutError;

/// Exit codes: 2 bad layout or usage, 3 missing tool or file, 4 a tool failed, 1 anything else.
pub fn exit_code(e: &LayoutError) -> u8 {
    match e {
        LayoutError::Parse { .. }
        | LayoutError::Invalid { .. }
        | LayoutError::TooSmall { .. }
        | LayoutError::TooLarge { .. }
        | LayoutError::Usage { .. } => 2,
        LayoutError::MissingTool { .. }
        | LayoutError::MissingFile { .. }
        | LayoutError::NotRoot { .. } => 3,
        LayoutError::ToolFailed { .. } => 4,
        _ => 1,
    }
}
