import ArgumentParser
import Foundation
import RootfsKit

/// Options every subcommand shares.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("distros-dir"), help: ArgumentHelp(
        "Also search DIR for distros (repeatable; searched before ROOTFS_DISTROS_PATH and the built-in ones).",
        valueName: "DIR"))
    var distrosDirs: [String] = []

    @Flag(name: .shortAndLong, help: "Show every line tools print.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Print only warnings, errors and results.")
    var quiet = false

    @Option(name: .customLong("log-file"), help: ArgumentHelp(
        "Also write every line (whatever -q/-v say) to FILE.", valueName: "FILE"))
    var logFile: String?

    func validate() throws {
        if quiet && verbose { throw ValidationError("--quiet and --verbose exclude each other") }
        if let logFile, !FS.isDirectory(FS.parent(FS.absolute(logFile))) {
            throw ValidationError("--log-file: the directory of \(logFile) does not exist")
        }
    }

    /// The console for a command; `json`: stdout is kept for the JSON document.
    func makeConsole(json: Bool = false) -> Console {
        let console = Console(level: quiet ? .quiet : verbose ? .verbose : .normal)
        console.resultsToStandardError = json
        if let logFile {
            do { try console.openUserLog(at: logFile) } catch { console.warning("\(error)") }
        }
        return console
    }
}

/// What `--json` prints when a command fails: `{"error": {...}}`.
struct JSONError: Encodable {
    struct Body: Encodable {
        var message: String
        var hint: String?
        var details: [String]
    }
    var error: Body

    init(_ error: any Error) {
        if let e = error as? RootfsError {
            self.error = Body(message: e.message, hint: e.hint, details: e.details)
        } else if let e = error as? ToolFailure {
            self.error = Body(message: "\(e.command.toolName) failed (\(e.status))", hint: nil, details: e.outputTail)
        } else {
            self.error = Body(message: "\(error)", hint: nil, details: [])
        }
    }
}

/// Prints one JSON document on stdout.
func printJSON<T: Encodable>(_ value: T) throws {
    FileHandle.standardOutput.write(try jsonDocument(value))
}

/// Runs a subcommand's work: Ctrl-C and SIGTERM cancel it (child processes
/// are stopped, temporary files removed), and errors become one clear message
/// and a non-zero exit status.
enum CommandRunner {
    /// The signals that stop a command: Ctrl-C, kill, a closed terminal or ssh
    /// session (SIGHUP) and Ctrl-\\ (SIGQUIT). Each cancels the work, so hooks,
    /// containers and QEMU are stopped and temporaries removed, the same way.
    static let stopSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

    /// `json`: a failure also prints `{"error": ...}` on stdout (the message still goes to stderr).
    /// `signals`: what cancels the work (`boot --interactive` leaves SIGINT to the guest's terminal).
    /// `console`: the error also goes into its log files (--log-file), unless it has reported it already.
    /// `failureStatus`: the exit status of a failure (`boot` reserves 125 for its own, as `docker run`
    /// does, so a guest command's 1 stays the guest's); a RootfsError's own `exitStatus` wins.
    static func run(json: Bool = false, signals: [Int32] = stopSignals, console: Console? = nil, failureStatus: Int32 = 1,
                    _ body: @escaping @Sendable () async throws -> Void) async throws {
        let task = Task { try await body() }
        let stops = StopSignals(signals) {
            FileHandle.standardError.write(Data("\nrootfs: interrupted, cleaning up\n".utf8))
            task.cancel()
        }
        defer { stops.stop() }
        do {
            try await task.value
        } catch let error as ExitCode {
            throw error
        } catch is CancellationError {
            FileHandle.standardError.write(Data("rootfs: interrupted\n".utf8))
            throw ExitCode(130)
        } catch {
            if task.isCancelled {
                FileHandle.standardError.write(Data("rootfs: interrupted\n".utf8))
                throw ExitCode(130)
            }
            if let console {
                if !console.errorReported { console.report(error) }
            } else {
                FileHandle.standardError.write(Data("\(Console(level: .quiet).colored("error:", "1;31")) \(error)\n".utf8))
            }
            if json { try? printJSON(JSONError(error)) }
            throw ExitCode((error as? RootfsError)?.exitStatus ?? failureStatus)
        }
    }
}

extension Compression: ExpressibleByArgument {}
extension EngineChoice: ExpressibleByArgument {}
