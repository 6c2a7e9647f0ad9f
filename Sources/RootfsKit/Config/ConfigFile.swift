import Foundation
import RootfsTOML

/// Reads `rootfs.toml` with TOMLKit (RootfsTOML; toml++ underneath: no TOML parser of our own) and
/// a manifest's recorded config. Every failure names the file, and the key when there is one.
public enum ConfigFile {
    /// The file `rootfs build` and `rootfs summary` read from the working directory when no
    /// distro, -C or --from-manifest is given (as mkosi reads mkosi.conf).
    public static let defaultName = "rootfs.toml"

    /// The config in `path`, its relative paths made absolute against the file's directory.
    public static func load(_ path: String, option: String = "-C") throws -> RootfsConfig {
        let absolute = FS.absolute(path)
        guard FS.isRegularFile(absolute) else {
            throw RootfsError("\(option) \(path): no such file",
                              hint: "give a rootfs.toml (docs/CLI.md, \"Config files\"), or leave \(option) out")
        }
        guard let data = FileManager.default.contents(atPath: absolute), let text = String(data: data, encoding: .utf8) else {
            throw RootfsError("\(absolute) is not readable UTF-8 text", hint: "a config file is TOML, written in UTF-8")
        }
        return try parse(text, file: absolute).resolvingPaths(relativeTo: FS.parent(absolute))
    }

    /// The config in `text`; `file` names it in messages.
    public static func parse(_ text: String, file: String) throws -> RootfsConfig {
        do {
            return try TOMLDocument.decode(RootfsConfig.self, from: text)
        } catch TOMLDocument.Failure.syntax(let line, let column, let message) {
            throw RootfsError("\(file):\(line):\(column): \(message)",
                              hint: "a config file is TOML (key = \"value\" under [section] headers; docs/CLI.md)")
        } catch TOMLDocument.Failure.unknownKeys(let paths) {
            let sorted = paths.sorted { $0.joined(separator: ".") < $1.joined(separator: ".") }
            let named = sorted.map { $0.joined(separator: ".") }
            let section = sorted.first.flatMap { $0.count > 1 ? $0[0] : nil }
            let known = RootfsConfig.knownKeys(section: section)
            throw RootfsError("unknown key\(named.count == 1 ? "" : "s") \(named.map { "'\($0)'" }.joined(separator: ", ")) in \(file)",
                              hint: (section.map { "[\($0)] holds: " } ?? "the sections are: ") + known.sorted().joined(separator: ", "))
        } catch let error as DecodingError {
            throw RootfsError("\(file): \(describe(error))",
                              hint: "docs/CLI.md (\"Config files\") lists each key and its type")
        }
    }

    /// The config a manifest recorded (`rootfs build --from-manifest M`).
    public static func fromManifest(_ path: String) throws -> RootfsConfig {
        let manifest = try BuildManifest.read(path, option: "--from-manifest")
        guard let config = manifest.config else {
            throw RootfsError("--from-manifest \(path) records no option set (written by a rootfs before manifests held `config`)",
                              hint: "rebuild it once with this rootfs, or write a rootfs.toml from the manifest's options")
        }
        return config
    }

    static func describe(_ error: DecodingError) -> String {
        func key(_ path: [any CodingKey]) -> String {
            path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
                .replacingOccurrences(of: ".[", with: "[")
        }
        switch error {
        case .typeMismatch(let type, let context):
            return "key '\(key(context.codingPath))' has the wrong type: expected \(typeName(type))"
        case .valueNotFound(let type, let context):
            return "key '\(key(context.codingPath))' has no value: expected \(typeName(type))"
        case .keyNotFound(let k, let context):
            // Every key is optional: TOMLKit says "not found" for a value of the wrong type.
            let path = context.codingPath.last?.stringValue == k.stringValue ? context.codingPath : context.codingPath + [k]
            let name = key(path)
            return "key '\(name)' has the wrong type: expected \(RootfsConfig.expectedType(of: name))"
        case .dataCorrupted(let context):
            return "key '\(key(context.codingPath))': \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type: "a whole number"
        case is Bool.Type: "true or false"
        case is [String].Type: "an array of strings"
        default: "a table"
        }
    }
}

extension RootfsConfig {
    /// Paths written relative to the config file are relative to its directory (as mkosi's are),
    /// so a config works from any working directory. Image references (`oci:DIR`, `docker://N`)
    /// and absolute paths stay as they are.
    public func resolvingPaths(relativeTo base: String) -> RootfsConfig {
        func path(_ p: String?) -> String? {
            guard let p, !p.isEmpty else { return p }
            if p.hasPrefix("/") { return p }
            if p.hasPrefix("~/"), let home = ProcessInfo.processInfo.environment["HOME"] { return home + p.dropFirst(1) }
            return base + "/" + p
        }
        func reference(_ p: String?) -> String? {
            guard let p else { return nil }
            return (try? ImageReference.parse(p)) != nil || p.contains("://") ? p : path(p)
        }
        var c = self
        c.distro?.distrosDirs = distro?.distrosDirs?.compactMap(path)
        c.distro?.fromImage = reference(distro?.fromImage)
        c.content?.agent = path(content?.agent)
        c.content?.overlays = content?.overlays?.compactMap(reference)
        c.content?.files = content?.files?.map { spec in
            guard let eq = spec.firstIndex(of: "=") else { return spec }
            return String(spec[..<eq]) + "=" + (path(String(spec[spec.index(after: eq)...])) ?? "")
        }
        c.output?.directory = path(output?.directory)
        c.output?.rootfsDir = path(output?.rootfsDir)
        c.output?.initrd = path(output?.initrd)
        c.output?.image = path(output?.image)
        c.image?.kernel = path(image?.kernel)
        c.build?.cacheDir = path(build?.cacheDir)
        c.boot?.kernel = path(boot?.kernel)
        return c
    }

    /// The config as TOML text (`rootfs summary --toml`, a starting rootfs.toml).
    public func toml() throws -> String {
        try TOMLDocument.encode(self)
    }
}
