import RootfsSupport
import Foundation

/// A container image given where a TREE is taken: `oci:DIR[:TAG]` (an OCI image
/// layout directory) or `docker-archive:FILE` (what `docker save` writes).
public struct ImageReference: Sendable, Equatable, CustomStringConvertible {
    public enum Transport: String, Sendable, CaseIterable {
        case oci
        case dockerArchive = "docker-archive"
    }

    public var transport: Transport
    /// The layout directory or the archive file, absolute.
    public var path: String
    /// For `oci:`: the `org.opencontainers.image.ref.name` to pick from index.json.
    public var tag: String?

    public init(transport: Transport, path: String, tag: String? = nil) {
        self.transport = transport
        self.path = path
        self.tag = tag
    }

    public var description: String {
        switch transport {
        case .oci: return "OCI layout \(path)" + (tag.map { " (tag \($0))" } ?? "")
        case .dockerArchive: return "docker archive \(path)"
        }
    }

    /// The transports a TREE may name, for error messages.
    public static var transportList: String {
        (Transport.allCases.map { $0.rawValue + ":" } + engineSchemes.map { $0 + "NAME" }).joined(separator: ", ")
    }

    /// Images held by an engine: the CLI has the engine save them to a docker
    /// archive first (RootfsKit's EngineImageExports), so they never reach here unresolved.
    static let engineSchemes = ["docker://", "podman://"]

    /// The image `text` names, or nil when it is a plain path. A `word:` prefix that
    /// is no transport and no existing path is an error, so a typo (`ocl:dir`) does not
    /// become "no such file".
    public static func parse(_ text: String, option: String = "TREE") throws -> ImageReference? {
        if engineSchemes.contains(where: { text.hasPrefix($0) }) {
            throw RootfsError("\(option) \(text) names an engine's image, which this command cannot read directly",
                              hint: "save it first (docker save -o FILE NAME) and give docker-archive:FILE")
        }
        for transport in Transport.allCases where text.hasPrefix(transport.rawValue + ":") {
            let rest = String(text.dropFirst(transport.rawValue.count + 1))
            guard !rest.isEmpty else {
                throw RootfsError("\(option) \(text) names no \(transport == .oci ? "directory" : "file")",
                                  hint: transport == .oci ? "write oci:DIR or oci:DIR:TAG" : "write docker-archive:FILE (docker save -o FILE IMAGE)")
            }
            switch transport {
            case .dockerArchive:
                let file = FS.absolute(rest)
                guard FS.isRegularFile(file) else {
                    throw RootfsError("\(option) \(text): \(rest) is not a file", hint: "give the file `docker save -o FILE IMAGE` wrote")
                }
                return ImageReference(transport: .dockerArchive, path: file)
            case .oci:
                // DIR may itself hold a colon: the whole of it first, then DIR:TAG.
                var dir = rest
                var tag: String?
                if !FS.isDirectory(FS.absolute(rest)), let colon = rest.lastIndex(of: ":") {
                    dir = String(rest[..<colon])
                    tag = String(rest[rest.index(after: colon)...])
                    if tag!.isEmpty { tag = nil }
                }
                let absolute = FS.absolute(dir)
                guard FS.isDirectory(absolute) else {
                    throw RootfsError("\(option) \(text): \(dir) is not a directory",
                                      hint: "give an OCI image layout (skopeo copy ... oci:DIR:TAG writes one)")
                }
                return ImageReference(transport: .oci, path: absolute, tag: tag)
            }
        }
        if let colon = text.firstIndex(of: ":"), colon != text.startIndex {
            let scheme = text[..<colon]
            let looksLikeScheme = scheme.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "+" || $0 == ".") }
                && scheme.first!.isLetter && !scheme.contains("/")
            if looksLikeScheme && !FS.exists(FS.absolute(text)) {
                throw RootfsError("\(option) \(text): unknown transport \(scheme):",
                                  hint: "a TREE is a directory, a tar archive, or one of \(transportList) (oci:DIR[:TAG], docker-archive:FILE)")
            }
        }
        return nil
    }
}
