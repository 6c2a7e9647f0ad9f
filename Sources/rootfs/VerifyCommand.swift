import ArgumentParser
import Foundation
import RootfsKit

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check a build's outputs against its manifest: every sha256 again, and the build's checks on the trees.",
        discussion: """
        Each output the manifest names is looked for where the build wrote it, else beside the \
        manifest (a directory moved as a whole). Exits 1 naming each output that changed or is missing.
        """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The <name>.manifest.json a build wrote.", completion: .file(extensions: ["json"]))
    var manifest: String
    @Flag(help: "Print one JSON document (manifest, ok, each output with its result and problems).") var json = false

    func run() async throws {
        let (manifest, json) = (manifest, json)
        let console = global.makeConsole(json: json)
        try await CommandRunner.run(json: json) {
            let report = try ManifestVerifier().verify(manifest)
            if json { try printJSON(report) }
            for item in report.outputs where !json || !item.problems.isEmpty {
                let digest = item.sha256.map { "  sha256:" + $0 } ?? ""
                console.result("\(item.result): \(item.kind) \(item.path)\(digest)" + (item.checked.map { " (\($0))" } ?? ""))
            }
            guard report.ok else {
                let failed = report.outputs.filter { !$0.problems.isEmpty }
                let error = RootfsError("\(failed.count) output(s) do not match \(report.manifest): \(failed.map(\.path).joined(separator: ", "))",
                                  hint: "rebuild them (`rootfs build --from-manifest \(report.manifest)`), or find what changed them",
                                  details: failed.flatMap(\.problems))
                // With --json the report is the one document on stdout; the error goes to stderr only.
                guard json else { throw error }
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                throw ExitCode.failure
            }
            console.info("verified \(report.outputs.count) output(s) against \(report.manifest)")
        }
    }
}
