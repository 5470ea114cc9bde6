//! The supervisor's exit codes, in one place.

/// How the `handover` process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitCode {
    /// Done, or drained cleanly after `SIGTERM`/`SIGINT`.
    Success,
    /// A runtime failure: a port in use, a control socket already taken, …
    Failure,
    /// Bad command line or configuration (clap uses 2 as well).
    Usage,
    /// A worker program crashed at start again and again: the supervisor gave up.
    CrashLoop,
    /// Draining took longer than `--drain-timeout`: the remaining workers were killed.
    DrainTimedOut,
    /// A second `SIGTERM`/`SIGINT` cut the drain short, or `SIGQUIT` asked for a fast
    /// shutdown (exit status 128 + signal number, as a shell reports a process killed by that
    /// signal: 143, 130, 131).
    KilledBySignal(i32),
    /// `handover stop`: the exit status the stopped supervisor reported, passed on.
    Reported(i32),
}

impl ExitCode {
    /// The process exit status.
    pub(crate) fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Failure => 1,
            ExitCode::Usage => 2,
            ExitCode::CrashLoop => 3,
            ExitCode::DrainTimedOut => 4,
            ExitCode::KilledBySignal(sig) => 128 + sig,
            ExitCode::Reported(code) => code,
        }
    }

    /// The worse of two outcomes (the first non-success wins).
    pub(crate) fn or(self, other: ExitCode) -> ExitCode {
        if self == ExitCode::Success {
            other
        } else {
            self
        }
    }
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> std::process::ExitCode {
        std::process::ExitCode::from(code.code().clamp(0, 255) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_stable() {
        let all = [
            ExitCode::Success,
            ExitCode::Failure,
            ExitCode::Usage,
            ExitCode::CrashLoop,
            ExitCode::DrainTimedOut,
            ExitCode::KilledBySignal(15),
            ExitCode::KilledBySignal(3),
            ExitCode::Reported(4),
        ];
        let codes: Vec<i32> = all.iter().map(|c| c.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 143, 131, 4]);
        assert_eq!(ExitCode::Success.or(ExitCode::CrashLoop), ExitCode::CrashLoop);
        assert_eq!(ExitCode::Failure.or(ExitCode::CrashLoop), ExitCode::Failure);
    }
}
