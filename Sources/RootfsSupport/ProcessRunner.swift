import Foundation
import Subprocess
import Synchronization
#if canImport(System)
import System
#else
import SystemPackage
#endif

/// What a finished tool printed.
public struct ToolOutput: Sendable {
    public var standardOutput: String
    public var standardError: String
}

/// Runs every external tool of the project. It throws `ToolFailure` on a
/// non-zero exit, naming the tool, its arguments and the tail of its output.
public struct ProcessRunner: Sendable {
    /// How many trailing output lines a failure carries.
    public var tailLines = 25

    public init() {}

    /// Runs the command and collects its output.
    @discardableResult
    public func capture(_ command: ToolCommand, input: String? = nil) async throws -> ToolOutput {
        let config = try configuration(for: command)
        let status: TerminationStatus, out: String, err: String
        do {
            if let input {
                let r = try await Subprocess.run(config, input: .string(input),
                                                 output: .string(limit: 64 << 20), error: .string(limit: 16 << 20))
                (status, out, err) = (r.terminationStatus, r.standardOutput, r.standardError)
            } else {
                let r = try await Subprocess.run(config, output: .string(limit: 64 << 20),
                                                 error: .string(limit: 16 << 20))
                (status, out, err) = (r.terminationStatus, r.standardOutput, r.standardError)
            }
        } catch let error as SubprocessError {
            throw ToolFailure(command: command, status: .couldNotStart("\(error)"), outputTail: [])
        }
        guard status.isSuccess else {
            let lines = (err + "\n" + out).split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            throw ToolFailure(command: command, status: describe(status),
                              outputTail: Array(lines.suffix(tailLines)))
        }
        return ToolOutput(standardOutput: out, standardError: err)
    }

    /// Runs the command, handing each line of its output (stdout and stderr
    /// merged) to `onLine` as it comes.
    public func stream(_ command: ToolCommand, onLine: @escaping @Sendable (String) -> Void) async throws {
        let config = try configuration(for: command)
        let tail = LineTail(limit: tailLines)
        let status: TerminationStatus
        do {
            let result = try await Subprocess.run(config, input: .none, output: .sequence,
                                                  error: .combinedWithOutput) { execution in
                for try await line in execution.standardOutput.strings(bufferingPolicy: .maxLineLength(64 << 10)) {
                    let trimmed = line.hasSuffix("\n") ? String(line.dropLast()) : line
                    tail.append(trimmed)
                    onLine(trimmed)
                }
            }
            status = result.terminationStatus
        } catch let error as SubprocessError {
            throw ToolFailure(command: command, status: .couldNotStart("\(error)"), outputTail: tail.lines)
        }
        guard status.isSuccess else {
            throw ToolFailure(command: command, status: describe(status), outputTail: tail.lines)
        }
    }

    /// Runs the command with its standard output written to the new file `path`
    /// (created 0600, never over an existing file): binary streams such as the tar
    /// `docker cp CONTAINER:PATH -` prints. Standard error is kept for the failure.
    public func capture(_ command: ToolCommand, standardOutputTo path: String) async throws {
        let config = try configuration(for: command)
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw RootfsError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        let status: TerminationStatus, err: String
        do {
            let r = try await Subprocess.run(config, output: .fileDescriptor(FileDescriptor(rawValue: fd), closeAfterSpawningProcess: true),
                                             error: .string(limit: 16 << 20))
            (status, err) = (r.terminationStatus, r.standardError ?? "")
        } catch let error as SubprocessError {
            throw ToolFailure(command: command, status: .couldNotStart("\(error)"), outputTail: [])
        }
        guard status.isSuccess else {
            let lines = err.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            throw ToolFailure(command: command, status: describe(status), outputTail: Array(lines.suffix(tailLines)))
        }
    }

    /// Whether `name` can be found on PATH (or is an executable path).
    public static func which(_ name: String, path: String? = ProcessInfo.processInfo.environment["PATH"]) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        for dir in (path ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// `ownSession`: the tool runs in a session (and process group) of its own, so
    /// a cancellation stops it and everything it started (a hook's mmdebstrap,
    /// apt, dpkg...), and a Ctrl-C at the terminal reaches rootfs only, which
    /// then cleans up in order. Off for tools that share the user's terminal.
    func configuration(for command: ToolCommand, ownSession: Bool = true) throws -> Configuration {
        let executable: Executable = command.tool.contains("/") ? .path(FilePath(command.tool)) : .name(command.tool)
        var environment: Environment
        if command.cleanEnvironment {
            environment = .custom(Dictionary(uniqueKeysWithValues: command.environment.map {
                (Environment.Key(stringLiteral: $0.key), $0.value)
            }))
        } else {
            environment = .inherit.updating(Dictionary(uniqueKeysWithValues: command.environment.map {
                (Environment.Key(stringLiteral: $0.key), Optional($0.value))
            }))
        }
        var options = PlatformOptions()
        // On cancellation (Ctrl-C), ask politely, then kill.
        options.createSession = ownSession
        options.teardownSequence = [.gracefulShutDown(toProcessGroup: ownSession, allowedDurationToNextStep: .seconds(5))]
        return Configuration(executable: executable, arguments: Arguments(command.arguments), environment: environment,
                             workingDirectory: command.workingDirectory.map { FilePath($0) },
                             platformOptions: options)
    }

    private func describe(_ status: TerminationStatus) -> ProcessStatus {
        switch status {
        case .exited(let code): return .exited(Int32(truncatingIfNeeded: code))
        case .signaled(let signal): return .signalled(Int32(truncatingIfNeeded: signal))
        }
    }
}

/// The last few lines of a stream, shared between the reader and the error path.
final class LineTail: Sendable {
    private let buffer = Mutex<[String]>([])
    private let limit: Int
    init(limit: Int) { self.limit = limit }
    func append(_ line: String) {
        buffer.withLock { buffer in
            buffer.append(line)
            if buffer.count > limit { buffer.removeFirst(buffer.count - limit) }
        }
    }
    var lines: [String] { buffer.withLock { $0 } }
}
