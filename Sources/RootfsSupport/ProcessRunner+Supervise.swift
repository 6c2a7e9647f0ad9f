import Foundation
import Subprocess
import Synchronization

/// How a supervised process ended.
public enum ProcessExit: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)
}

/// Lets a supervisor look at and stop the process it watches.
public struct ProcessControl: Sendable {
    public let processID: Int32
    let sendKill: @Sendable () -> Void

    /// Kills the process (SIGKILL). Its output then ends and `supervise` returns.
    public func kill() { sendKill() }

    /// Whether the process has exited (without reaping it).
    public var hasExited: Bool {
        var info = siginfo_t()
        let result = waitid(P_PID, id_t(processID), &info, WEXITED | WNOHANG | WNOWAIT)
        if result != 0 { return true }
        return info._sifields._sigchld.si_pid != 0
    }
}

/// What `supervise` saw.
public struct SupervisedOutcome: Sendable {
    public var exit: ProcessExit
    /// Standard error (empty with `.terminal`).
    public var standardError: String
}

/// The processes `supervise` is running, so a signal handler can stop them
/// before the program exits (a plain `kill` of rootfs would orphan them).
public enum SupervisedProcesses {
    private static let running = Mutex<Set<Int32>>([])

    static func add(_ pid: Int32) { _ = running.withLock { $0.insert(pid) } }
    static func remove(_ pid: Int32) { _ = running.withLock { $0.remove(pid) } }

    /// Sends SIGKILL to every supervised process still running.
    public static func killAll() {
        running.withLock { for pid in $0 { kill(pid, SIGKILL) } }
    }
}

extension ProcessRunner {
    /// Where a supervised process's standard streams go.
    public enum SupervisedIO: Sendable {
        /// stdin is empty, stdout is handed over in chunks, stderr is collected.
        case pipes
        /// The process shares the caller's terminal (stdin, stdout, stderr).
        case terminal
    }

    /// Runs a long-lived tool under a supervisor. Unlike `capture` and `stream`
    /// this does not throw on a non-zero exit: the caller judges the outcome.
    /// `supervisor` runs alongside the process and may kill it; it is
    /// cancelled once the process's output has ended (with `.pipes`) and must
    /// return once `control.hasExited` (with `.terminal`). Bytes of stdout are
    /// handed to `onOutput` as they come, unchanged.
    public func supervise(_ command: ToolCommand, io: SupervisedIO,
                          onOutput: @escaping @Sendable ([UInt8]) -> Void = { _ in },
                          supervisor: @escaping @Sendable (ProcessControl) async -> Void) async throws -> SupervisedOutcome {
        let config = try configuration(for: command, ownSession: io == .pipes)
        let status: TerminationStatus
        var standardError = ""
        do {
            switch io {
            case .pipes:
                // stderr as a stream whose last 64 KiB are kept: a chatty process (QEMU
                // warning on every guest write) must not fail a good run by passing a limit.
                let errorTail = ByteTail(limit: 64 << 10)
                let result = try await Subprocess.run(config, input: .none, output: .sequence,
                                                      error: .sequence) { execution in
                    let pid = execution.processIdentifier.value
                    let control = ProcessControl(processID: pid, sendKill: { _ = try? execution.send(signal: .kill) })
                    SupervisedProcesses.add(pid)
                    defer { SupervisedProcesses.remove(pid) }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { await supervisor(control) }
                        try await withThrowingTaskGroup(of: Void.self) { streams in
                            streams.addTask {
                                for try await chunk in execution.standardError {
                                    errorTail.append(chunk.withUnsafeBytes { Array($0) })
                                }
                            }
                            streams.addTask {
                                for try await chunk in execution.standardOutput {
                                    onOutput(chunk.withUnsafeBytes { Array($0) })
                                }
                            }
                            try await streams.waitForAll()
                        }
                        group.cancelAll()
                    }
                }
                status = result.terminationStatus
                standardError = errorTail.text
            case .terminal:
                let result = try await Subprocess.run(config, input: .currentStandardInput,
                                                      output: .currentStandardOutput,
                                                      error: .currentStandardError) { execution in
                    let pid = execution.processIdentifier.value
                    let control = ProcessControl(processID: pid, sendKill: { _ = try? execution.send(signal: .kill) })
                    SupervisedProcesses.add(pid)
                    defer { SupervisedProcesses.remove(pid) }
                    await supervisor(control)
                }
                status = result.terminationStatus
            }
        } catch let error as SubprocessError {
            throw ToolFailure(command: command, status: .couldNotStart("\(error)"), outputTail: [])
        }
        switch status {
        case .exited(let code): return SupervisedOutcome(exit: .exited(Int32(code)), standardError: standardError)
        case .signaled(let signal): return SupervisedOutcome(exit: .signaled(Int32(signal)), standardError: standardError)
        }
    }
}

/// A stream's last bytes (at most `limit`), however much it writes.
final class ByteTail: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    let limit: Int
    init(limit: Int) { self.limit = limit }
    func append(_ more: [UInt8]) {
        bytes.withLock { bytes in
            bytes += more
            // Amortized: cut once twice the limit is held.
            if bytes.count > 2 * limit { bytes.removeFirst(bytes.count - limit) }
        }
    }
    var text: String { String(decoding: bytes.withLock { Array($0.suffix(limit)) }, as: UTF8.self) }
}
