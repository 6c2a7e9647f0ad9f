import RootfsSupport
import CArchive
import Foundation

/// Writes a guest tree as a single-layer container image: an OCI image layout
/// directory (`oci`), or the archive `docker load` reads (`docker-archive`).
///
/// Reproducible: the layer is the tar writer's (mtimes clamped to the epoch, no gzip
/// time stamp, a fixed zstd worker count), the JSON is encoded with sorted keys, and
/// every time stamp comes from `epoch` (SOURCE_DATE_EPOCH) or is left out: the same
/// tree and epoch give the same manifest digest.
public struct OCIImageWriter: Sendable {
    public enum Layout: String, Sendable {
        case oci
        case dockerArchive = "docker-archive"
    }

    public var layout: Layout
    /// The layer's compression in an OCI layout (a docker archive holds it uncompressed, as `docker save` does).
    public var compression: Compression
    public var epoch: Int?
    /// The OCI architecture name (amd64, arm64...).
    public var architecture: String
    /// `org.opencontainers.image.version` and `.revision`, when known.
    public var version: String?
    public var revision: String?
    /// The tag: `org.opencontainers.image.ref.name` in index.json, `NAME:TAG` in a docker archive.
    public var reference: String
    /// Changes each item before it goes into the layer (a containerdisk's owners).
    var transform: (@Sendable (inout TreeItem) throws -> Void)? = nil

    public init(layout: Layout, compression: Compression = .gzip, epoch: Int? = nil, architecture: String = OCIArchitecture.host,
                version: String? = nil, revision: String? = nil, reference: String = "rootfs:latest") {
        self.layout = layout
        self.compression = compression
        self.epoch = epoch
        self.architecture = architecture
        self.version = version
        self.revision = revision
        self.reference = reference
    }

    public struct Result: Sendable, Equatable {
        /// sha256:... of the manifest (an OCI layout) or of the config (docker's image ID).
        public var manifestDigest: String
        public var configDigest: String
        public var layerDigest: String
        public var diffID: String
        public var stats: WriteStats
    }

    /// Writes the image of `source` to `output` (a directory for `oci`, a file for
    /// `docker-archive`), through a temporary name renamed at the end.
    @discardableResult
    public func write(source: TreeSource, to output: String) throws -> Result {
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let image = work + "/image"
        try FS.makeDirectories(image + "/blobs/sha256")
        let layerCompression: Compression = layout == .dockerArchive ? .none : compression
        let layerFile = work + "/layer"
        var stats = try TreeArchiver(format: .paxRestricted, compression: layerCompression, epoch: epoch, transform: transform)
            .write(source: source, to: layerFile)
        try Task.checkCancellation()
        let layerHex = try SHA256.hexDigest(ofFile: layerFile)
        let diffHex = layerCompression == .none ? layerHex : try Self.uncompressedDigest(of: layerFile)
        let layerSize = try Self.size(of: layerFile)

        let created = epoch.map(Self.timestamp)
        let config = OCIImageConfig(created: created, architecture: architecture, os: "linux", config: .init(Env: nil, Cmd: nil, Labels: labels),
                                    rootfs: .init(type: "layers", diff_ids: ["sha256:" + diffHex]),
                                    history: [.init(created: created, created_by: "rootfs", comment: "the guest tree as one layer")])
        let configBytes = try Self.encode(config)
        let configHex = SHA256.hexDigest(of: configBytes)
        let layerType = switch layerCompression {
        case .gzip: OCIMediaType.layerGzip
        case .zstd: OCIMediaType.layerZstd
        case .none: OCIMediaType.layerTar
        }
        let manifest = OCIManifest(schemaVersion: 2, mediaType: OCIMediaType.manifest,
                                   config: OCIDescriptor(mediaType: OCIMediaType.config, digest: "sha256:" + configHex, size: Int64(configBytes.count)),
                                   layers: [OCIDescriptor(mediaType: layerType, digest: "sha256:" + layerHex, size: layerSize)],
                                   annotations: labels)
        let manifestBytes = try Self.encode(manifest)
        let manifestHex = SHA256.hexDigest(of: manifestBytes)
        stats.outputBytes = layerSize + Int64(configBytes.count + manifestBytes.count)

        switch layout {
        case .oci:
            try FS.rename(layerFile, to: image + "/blobs/sha256/" + layerHex)
            try Self.writeFile(image + "/blobs/sha256/" + configHex, configBytes)
            try Self.writeFile(image + "/blobs/sha256/" + manifestHex, manifestBytes)
            var annotations = ["org.opencontainers.image.ref.name": tagPart]
            if let created { annotations["org.opencontainers.image.created"] = created }
            let index = OCIIndex(schemaVersion: 2, mediaType: OCIMediaType.index, manifests: [
                OCIDescriptor(mediaType: OCIMediaType.manifest, digest: "sha256:" + manifestHex, size: Int64(manifestBytes.count),
                              annotations: annotations, platform: OCIPlatform(architecture: architecture, os: "linux")),
            ])
            try Self.writeFile(image + "/index.json", Self.encode(index))
            try Self.writeFile(image + "/oci-layout", Array(#"{"imageLayoutVersion":"1.0.0"}"#.utf8))
            try Task.checkCancellation()
            try FS.replaceDirectory(output, with: image)
        case .dockerArchive:
            // docker save's layout: <config hex>.json, <layer id>/layer.tar, manifest.json.
            let entries = [DockerArchiveManifestEntry(Config: configHex + ".json", RepoTags: [reference], Layers: [diffHex + "/layer.tar"])]
            let members: [(name: String, content: ArchiveMember)] = [
                (configHex + ".json", .bytes(configBytes)),
                (diffHex, .directory),
                (diffHex + "/layer.tar", .file(layerFile)),
                ("manifest.json", .bytes(try Self.encode(entries))),
            ]
            try writeTar(members, to: output)
        }
        return Result(manifestDigest: "sha256:" + manifestHex, configDigest: "sha256:" + configHex,
                      layerDigest: "sha256:" + layerHex, diffID: "sha256:" + diffHex, stats: stats)
    }

    /// The org.opencontainers.image.* annotations (and the same as config labels).
    private var labels: [String: String] {
        var out: [String: String] = [:]
        if let epoch { out["org.opencontainers.image.created"] = Self.timestamp(epoch) }
        if let version { out["org.opencontainers.image.version"] = version }
        if let revision { out["org.opencontainers.image.revision"] = revision }
        return out
    }

    /// The TAG of NAME:TAG (the whole reference when it has no tag).
    private var tagPart: String {
        if let colon = reference.lastIndex(of: ":"), !reference[colon...].contains("/") {
            return String(reference[reference.index(after: colon)...])
        }
        return reference
    }

    static func timestamp(_ epoch: Int) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(epoch)))
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        // Sorted keys: the same document gives the same bytes, hence the same digest.
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(value))
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
        defer { close(fd) }
        try bytes.withUnsafeBytes { try FS.writeAll($0, to: fd, name: path) }
    }

    static func size(of path: String) throws -> Int64 {
        var st = stat()
        guard stat(path, &st) == 0 else { throw RootfsError("cannot stat \(path): \(FS.errnoText())") }
        return Int64(st.st_size)
    }

    /// The sha256 of a compressed file's uncompressed bytes (a layer's diff_id).
    static func uncompressedDigest(of path: String) throws -> String {
        guard let a = archive_read_new() else { throw RootfsError("libarchive: out of memory") }
        defer { archive_read_free(a) }
        archive_read_support_filter_all(a)
        archive_read_support_format_raw(a)
        guard archive_read_open_filename(a, path, 1 << 16) == ARCHIVE_OK else {
            throw RootfsError("cannot read \(path): \(archive_error_string(a).map { String(cString: $0) } ?? "?")")
        }
        var e: OpaquePointer?
        guard archive_read_next_header(a, &e) == ARCHIVE_OK else { throw RootfsError("cannot read \(path) as a compressed stream") }
        var hasher = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let n = archive_read_data(a, buffer.baseAddress, buffer.count)
            if n < 0 { throw RootfsError("cannot decompress \(path): \(archive_error_string(a).map { String(cString: $0) } ?? "?")") }
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return SHA256.hex(hasher.finalize())
    }

    enum ArchiveMember {
        case bytes([UInt8])
        case file(String)
        case directory
    }

    /// An uncompressed tar of a few members, owned by root, stamped with the epoch (also
    /// tar-kernel-initrd's NAME-initrd.tar).
    func writeTar(_ members: [(name: String, content: ArchiveMember)], to output: String) throws {
        let temporary = FS.siblingTemporaryPath(for: output)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RootfsError("cannot create \(output): \(FS.errnoText())") }
        var keep = false
        defer {
            close(fd)
            if !keep { unlink(temporary) }
        }
        let archive = try ArchiveWriteHandle(format: .paxRestricted, compression: .none)
        try archive.open(fd: fd)
        let entry = ArchiveEntryHandle()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        for member in members {
            entry.clear()
            entry.setPath(Array(member.name.utf8))
            entry.setModificationTime(epoch ?? 0)
            entry.setOwner(uid: 0, gid: 0)
            switch member.content {
            case .directory:
                entry.setMode(mode_t(FileType.dir | 0o755))
                entry.setSize(0)
                try archive.writeHeader(entry)
            case .bytes(let bytes):
                entry.setMode(mode_t(FileType.reg | 0o644))
                entry.setSize(Int64(bytes.count))
                try archive.writeHeader(entry)
                try bytes.withUnsafeBytes { try archive.writeData($0) }
            case .file(let path):
                entry.setMode(mode_t(FileType.reg | 0o644))
                entry.setSize(try Self.size(of: path))
                try archive.writeHeader(entry)
                let input = open(path, O_RDONLY | O_CLOEXEC)
                guard input >= 0 else { throw RootfsError("cannot read \(path): \(FS.errnoText())") }
                defer { close(input) }
                while true {
                    let n = read(input, buffer.baseAddress, buffer.count)
                    if n < 0 { if errno == EINTR { continue }; throw RootfsError("cannot read \(path): \(FS.errnoText())") }
                    if n == 0 { break }
                    try archive.writeData(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                }
            }
            try archive.finishEntry()
        }
        try archive.close()
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        keep = true
    }
}
