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

    func makeConsole() -> Console {
        Console(level: quiet ? .quiet : verbose ? .verbose : .normal)
    }
}

/// Runs a subcommand's work: Ctrl-C and SIGTERM cancel it (child processes
/// are stopped, temporary files removed), and errors become one clear message
/// and a non-zero exit status.
enum CommandRunner {
    static func run(_ body: @escaping @Sendable () async throws -> Void) async throws {
        let task = Task { try await body() }
        let sources = [SIGINT, SIGTERM].map { sig -> DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                FileHandle.standardError.write(Data("\nrootfs: interrupted, cleaning up\n".utf8))
                task.cancel()
            }
            source.resume()
            return source
        }
        defer { sources.forEach { $0.cancel() } }
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
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}

extension Compression: ExpressibleByArgument {}
extension EngineChoice: ExpressibleByArgument {}
