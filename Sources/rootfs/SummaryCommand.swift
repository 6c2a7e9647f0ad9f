import ArgumentParser
import Foundation
import RootfsKit

/// `rootfs summary`: a build's settings as they resolve (flags over the config file over the
/// environment over the defaults), what it would write, and what would stop it, as
/// `mkosi summary` shows them. Nothing runs but config.sh's evaluation; nothing is written.
struct SummaryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "summary",
        abstract: "Show a build's resolved settings and outputs (from -C FILE, ./rootfs.toml, --from-manifest M and flags); write nothing.",
        discussion: """
        Takes what `rootfs build` takes. The settings are shown in rootfs.toml's sections; \
        `--json` prints them as one document: {"source", "config", "outputs", "problems"}.
        """)

    @Flag(help: "Print one JSON document: the source, the resolved config (rootfs.toml's shape), the outputs and the problems.")
    var json = false
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp(
        "The distro, -C FILE or --from-manifest MANIFEST, and any `rootfs build` option.", valueName: "build-arguments"))
    var arguments: [String] = []

    struct Report: Encodable {
        struct Output: Encodable { var format: String; var path: String }
        var source: String?
        var config: RootfsConfig
        var outputs: [Output]
        var problems: [JSONError.Body]
    }

    func run() async throws {
        let given = try BuildCommand.parse(arguments)
        let command = try await given.withConfig(commandLine: arguments) ?? given
        let copy = CommandLineCopy(command)
        let json = json
        let console = command.global.makeConsole(json: json)
        try await CommandRunner.run(json: json) {
            let command = copy.command
            let source = try command.configSource()
            // build's own mapping; a summary only plans: no cache, a dry run.
            var options = command.makeOptions(boot: source?.config.boot)
            options.fromImage = command.fromImage
            options.noCache = true
            options.dryRun = true
            options.formats = try command.formats.map(OutputFormat.parse)
            options.imageOptions = try command.imageFlags.options(epoch: nil, compression: command.compression)
            options.daxHeader = command.imageFlags.daxHeader
            let plan = try await Builder(console: console).plan(options)
            let config = plan.recordedConfig ?? RootfsConfig()
            let report = Report(source: source.map { "\($0.path) (\($0.option))" }, config: config,
                                outputs: plan.outputs.map { .init(format: $0.format.rawValue, path: $0.path) }
                                    + (plan.manifestPath.map { [.init(format: "manifest", path: $0)] } ?? []),
                                problems: plan.problems.map { JSONError($0).error })
            if json {
                try printJSON(report)
            } else {
                print(try Self.text(report))
            }
        }
    }

    /// The report as mkosi prints its summary: a block per section, a key per line.
    static func text(_ report: Report) throws -> String {
        var lines = ["Source: \(report.source ?? "flags and environment only (no config file)")"]
        let data = try jsonDocument(report.config)
        let sections = try JSONDecoder().decode([String: [String: Shown]].self, from: data)
        for name in ["distro", "content", "output", "image", "build", "boot"] {
            guard let table = sections[name], !table.isEmpty else { continue }
            lines.append("")
            lines.append("[\(name)]")
            let width = table.keys.map(\.count).max() ?? 0
            for key in table.keys.sorted() {
                lines.append("  " + key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + table[key]!.text)
            }
        }
        lines.append("")
        lines.append("Outputs:")
        for o in report.outputs { lines.append("  \(o.format): \(o.path)") }
        if !report.problems.isEmpty {
            lines.append("")
            lines.append("Problems (a build would stop):")
            for p in report.problems { lines.append("  \(p.message)" + (p.hint.map { " (\($0))" } ?? "")) }
        }
        return lines.joined(separator: "\n")
    }

    /// A config value as the summary shows it.
    enum Shown: Decodable {
        case bool(Bool), int(Int), string(String), list([Shown])
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let i = try? c.decode(Int.self) { self = .int(i) }
            else if let s = try? c.decode(String.self) { self = .string(s) }
            else { self = .list(try c.decode([Shown].self)) }
        }
        var text: String {
            switch self {
            case .bool(let b): b ? "yes" : "no"
            case .int(let i): String(i)
            case .string(let s): s
            case .list(let l): l.isEmpty ? "(none)" : l.map(\.text).joined(separator: ", ")
            }
        }
    }
}
