/// The one error type users see: what went wrong, and what to do about it.
public struct RootfsError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    /// What the user can do about it; printed on its own line.
    public var hint: String?
    /// Extra lines (a tool's output tail, a list of known distros).
    public var details: [String]
    /// The exit status rootfs ends with for this error; nil: the command's own (1, or 125 for
    /// `boot`). `boot` says 124 for a timeout, as timeout(1) and `docker run` do.
    public var exitStatus: Int32? = nil

    public init(_ message: String, hint: String? = nil, details: [String] = []) {
        self.message = message
        self.hint = hint
        self.details = details
    }

    public var description: String {
        var text = message
        for line in details { text += "\n  " + line }
        if let hint { text += "\nhint: " + hint }
        return text
    }
}

/// How a tool's process ended, as a value: code compares it, messages print it.
public enum ProcessStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)
    /// The process never ran (no such program, no permission): the reason.
    case couldNotStart(String)

    public var description: String {
        switch self {
        case .exited(let code): return "exit status \(code)"
        case .signalled(let signal): return "killed by signal \(signal)"
        case .couldNotStart(let reason): return "could not start: \(reason)"
        }
    }
}

/// A tool that exited non-zero (or could not be started).
public struct ToolFailure: Error, CustomStringConvertible, Sendable {
    public var command: ToolCommand
    public var status: ProcessStatus
    /// The last lines the tool printed, stdout and stderr together.
    public var outputTail: [String]

    public var description: String {
        var text = "\(command.toolName) failed (\(status)): \(command.displayString)"
        if !outputTail.isEmpty {
            text += "\n  last output:"
            for line in outputTail { text += "\n    " + line }
        }
        return text
    }
}
