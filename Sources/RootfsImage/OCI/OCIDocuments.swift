import RootfsSupport
import Foundation

/// The JSON documents of the OCI image spec (and Docker's `docker save`), read and
/// written through Codable with the spec's field names. Only the fields rootfs uses.
public enum OCIMediaType {
    public static let index = "application/vnd.oci.image.index.v1+json"
    public static let manifest = "application/vnd.oci.image.manifest.v1+json"
    public static let config = "application/vnd.oci.image.config.v1+json"
    public static let layerTar = "application/vnd.oci.image.layer.v1.tar"
    public static let layerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let layerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    static let dockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
    static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    static let dockerLayerTar = "application/vnd.docker.image.rootfs.diff.tar"

    static let manifests: Set<String> = [manifest, dockerManifest]
    static let indexes: Set<String> = [index, dockerList]
    /// Layer types read (libarchive detects the compression from the bytes, the type is checked).
    static let layers: Set<String> = [
        layerTar, layerGzip, layerZstd, dockerLayerGzip, dockerLayerTar,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ]
}

public struct OCIDescriptor: Codable, Sendable, Equatable {
    public var mediaType: String
    public var digest: String
    public var size: Int64
    public var annotations: [String: String]?
    public var platform: OCIPlatform?

    public init(mediaType: String, digest: String, size: Int64, annotations: [String: String]? = nil, platform: OCIPlatform? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.annotations = annotations
        self.platform = platform
    }

    /// The hex of a `sha256:` digest, refused unless it is exactly 64 lowercase hex
    /// digits: the digest becomes a file name under blobs/, so nothing else may pass.
    func sha256Hex(in what: String) throws -> String {
        guard let hex = OCIDescriptor.sha256Hex(digest) else {
            throw RootfsError("\(what) has the digest \(digest.prefix(100)), which is not sha256:<64 hex digits>",
                              hint: "rootfs reads images whose blobs are addressed by sha256")
        }
        return hex
    }

    static func sha256Hex(_ digest: String) -> String? {
        guard digest.hasPrefix("sha256:") else { return nil }
        let hex = digest.dropFirst(7)
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
        return String(hex)
    }
}

public struct OCIPlatform: Codable, Sendable, Equatable {
    public var architecture: String
    public var os: String
}

public struct OCIIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [OCIDescriptor]
}

public struct OCIManifest: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var config: OCIDescriptor
    public var layers: [OCIDescriptor]
    public var annotations: [String: String]?
}

/// An image config; only what rootfs writes or checks.
public struct OCIImageConfig: Codable, Sendable {
    public struct RootFS: Codable, Sendable {
        public var type: String
        public var diff_ids: [String]
    }
    public struct Config: Codable, Sendable {
        public var Env: [String]?
        public var Cmd: [String]?
        public var Labels: [String: String]?
    }
    public struct History: Codable, Sendable {
        public var created: String?
        public var created_by: String?
        public var comment: String?
    }
    public var created: String?
    public var architecture: String?
    public var os: String?
    public var config: Config?
    public var rootfs: RootFS
    public var history: [History]?
}

/// One entry of a `docker save` manifest.json.
struct DockerArchiveManifestEntry: Codable {
    var Config: String
    var RepoTags: [String]?
    var Layers: [String]
}

/// Decodes a JSON document, as a clear error naming it.
func decodeDocument<T: Decodable>(_ type: T.Type, from bytes: [UInt8], what: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(bytes))
    } catch {
        throw RootfsError("\(what) is not a valid \(T.self) document: \(error)")
    }
}
