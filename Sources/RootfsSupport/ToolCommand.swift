import Foundation

/// One invocation of an external tool, as data: the argument list is never
/// joined into a shell string, so tests can inspect it without running it.
public struct ToolCommand: Sendable, Equatable, CustomStringConvertible {
    /// A bare name (searched on PATH) or a path.
    public var tool: String
    public var arguments: [String]
    /// Variables set on top of the inherited (or, with `cleanEnvironment`, empty) environment.
    public var environment: [String: String]
    /// Start from an empty environment rather than the caller's.
    public var cleanEnvironment: Bool
    public var workingDirectory: String?

    public init(_ tool: String, _ arguments: [String] = [], environment: [String: String] = [:],
                cleanEnvironment: Bool = false, workingDirectory: String? = nil) {
        self.tool = tool
        self.arguments = arguments
        self.environment = environment
        self.cleanEnvironment = cleanEnvironment
        self.workingDirectory = workingDirectory
    }

    public var toolName: String {
        tool.split(separator: "/").last.map(String.init) ?? tool
    }

    /// The command as a user could paste it into a shell (for logs and --dry-run only).
    public var displayString: String {
        let env = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\(shellQuote($0.value))" }
        return (env + ([tool] + arguments).map(shellQuote)).joined(separator: " ")
    }

    public var description: String { displayString }
}

/// Quotes a word for display in a POSIX shell. Used only to show commands, never to run them.
public func shellQuote(_ word: String) -> String {
    if word.isEmpty { return "''" }
    let safe = word.unicodeScalars.allSatisfy { c in
        (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
            || "-_./:=@%+,".unicodeScalars.contains(c)
    }
    if safe { return word }
    return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
