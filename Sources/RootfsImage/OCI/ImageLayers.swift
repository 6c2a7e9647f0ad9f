import RootfsSupport
import CArchive
import Foundation

/// An image resolved down to its layers, bottom first, with the config it came with.
/// Every JSON document read on the way is checked against its digest and size.
struct ResolvedImage {
    var layers: [LayerBlob]
    var config: OCIImageConfig
}

/// The largest JSON document (index, manifest, config) read into memory.
private let documentLimit: Int64 = 16 << 20

extension ImageReference {
    func resolve() throws -> ResolvedImage {
        switch transport {
        case .oci: return try resolveLayout()
        case .dockerArchive: return try resolveDockerArchive()
        }
    }

    // MARK: OCI image layout

    private func resolveLayout() throws -> ResolvedImage {
        let indexPath = path + "/index.json"
        guard FS.isRegularFile(indexPath) else {
            throw RootfsError("\(path) is not an OCI image layout: it has no index.json",
                              hint: "skopeo copy docker-daemon:IMAGE oci:DIR:TAG writes one")
        }
        let index = try decodeDocument(OCIIndex.self, from: readSmallFile(indexPath, what: "\(path)/index.json"), what: "\(path)/index.json")
        let chosen = try choose(from: index.manifests, in: "\(path)/index.json")
        var descriptor = chosen
        // A nested index (a multi-platform image): the one manifest for this machine's platform.
        var depth = 0
        while OCIMediaType.indexes.contains(descriptor.mediaType) {
            depth += 1
            guard depth < 4 else { throw RootfsError("\(path): image indexes nest too deep") }
            let nested = try decodeDocument(OCIIndex.self, from: readBlob(descriptor, what: "the image index"), what: "the image index \(descriptor.digest)")
            let candidates = nested.manifests.filter {
                OCIMediaType.manifests.contains($0.mediaType) && ($0.platform.map { $0.os == "linux" && $0.architecture == OCIArchitecture.host } ?? true)
            }
            guard candidates.count == 1 else {
                throw RootfsError("the image index \(descriptor.digest) in \(path) has \(candidates.count) manifests for linux/\(OCIArchitecture.host)",
                                  hint: "copy one platform's image: skopeo copy --override-arch ARCH ... oci:DIR:TAG")
            }
            descriptor = candidates[0]
        }
        guard OCIMediaType.manifests.contains(descriptor.mediaType) else {
            throw RootfsError("\(path): the chosen descriptor is a \(descriptor.mediaType), not an image manifest")
        }
        let manifest = try decodeDocument(OCIManifest.self, from: readBlob(descriptor, what: "the manifest"), what: "the manifest \(descriptor.digest)")
        let config = try decodeDocument(OCIImageConfig.self, from: readBlob(manifest.config, what: "the config"), what: "the config \(manifest.config.digest)")
        guard config.rootfs.diff_ids.count == manifest.layers.count else {
            throw RootfsError("\(path): the manifest has \(manifest.layers.count) layers, its config names \(config.rootfs.diff_ids.count)",
                              hint: "the image is inconsistent: rebuild or copy it again")
        }
        var layers: [LayerBlob] = []
        for (n, layer) in manifest.layers.enumerated() {
            let label = "layer \(n + 1) (\(layer.digest)) of \(path)"
            let hex = try layer.sha256Hex(in: label)
            guard OCIMediaType.layers.contains(layer.mediaType) else {
                throw RootfsError("\(label) has the media type \(layer.mediaType)",
                                  hint: "rootfs reads tar layers, plain or compressed with gzip or zstd")
            }
            guard layer.size >= 0 else { throw RootfsError("\(label) has a negative size") }
            layers.append(LayerBlob(origin: .file(path + "/blobs/sha256/" + hex), sha256: hex, size: layer.size,
                                    mediaType: layer.mediaType, label: label))
        }
        return ResolvedImage(layers: layers, config: config)
    }

    /// The manifest named by the tag, or the only one.
    private func choose(from manifests: [OCIDescriptor], in what: String) throws -> OCIDescriptor {
        let tags = manifests.compactMap { $0.annotations?["org.opencontainers.image.ref.name"] }
        let known = tags.isEmpty ? "it names no tags" : "its tags: " + tags.joined(separator: ", ")
        if let tag {
            let matching = manifests.filter { $0.annotations?["org.opencontainers.image.ref.name"] == tag }
            guard matching.count == 1 else {
                throw RootfsError(matching.isEmpty ? "\(what) has no image tagged \(tag) (\(known))" : "\(what) has \(matching.count) images tagged \(tag)",
                                  hint: "write oci:\(path):TAG with one of the tags")
            }
            return matching[0]
        }
        guard manifests.count == 1 else {
            throw RootfsError("\(what) holds \(manifests.count) images; say which one (\(known))",
                              hint: "write oci:\(path):TAG")
        }
        return manifests[0]
    }

    /// A JSON blob of the layout, checked against its descriptor.
    private func readBlob(_ descriptor: OCIDescriptor, what: String) throws -> [UInt8] {
        let hex = try descriptor.sha256Hex(in: "\(what) in \(path)")
        guard descriptor.size >= 0, descriptor.size <= documentLimit else {
            throw RootfsError("\(what) \(descriptor.digest) in \(path) has the size \(descriptor.size), more than rootfs reads for a JSON document")
        }
        let bytes = try readSmallFile(path + "/blobs/sha256/" + hex, what: "\(what) \(descriptor.digest) in \(path)")
        guard Int64(bytes.count) == descriptor.size else {
            throw RootfsError("\(what) \(descriptor.digest) in \(path) has \(bytes.count) bytes, its descriptor says \(descriptor.size)",
                              hint: "the image layout is corrupt or was changed after it was written: copy it again")
        }
        let actual = SHA256.hexDigest(of: bytes)
        guard actual == hex else {
            throw RootfsError("\(what) \(descriptor.digest) in \(path) does not match its digest (read sha256:\(actual))",
                              hint: "the image layout is corrupt or was changed after it was written: copy it again")
        }
        return bytes
    }

    private func readSmallFile(_ file: String, what: String) throws -> [UInt8] {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RootfsError("cannot read \(what): \(FS.errnoText())", hint: "the image layout is incomplete: copy it again") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; throw RootfsError("cannot read \(what): \(FS.errnoText())") }
            if n == 0 { break }
            bytes += chunk[0..<n]
            if Int64(bytes.count) > documentLimit { throw RootfsError("\(what) is larger than \(documentLimit) bytes") }
        }
        return bytes
    }

    // MARK: docker save archive

    private func resolveDockerArchive() throws -> ResolvedImage {
        // Pass 1: the members' names and types, and manifest.json.
        var members: [[UInt8]: (type: UInt32, link: String?)] = [:]
        var manifestBytes: [UInt8]?
        do {
            let reader = try ArchiveReader(path: path)
            while let (entry, _) = try reader.next() {
                let name = try normalizeMemberName(entry.pathBytes, archive: path)
                members[name] = (entry.fileType, entry.symlink)
                if name == Array("manifest.json".utf8) {
                    guard entry.size <= documentLimit else { throw RootfsError("\(path): manifest.json is too large") }
                    manifestBytes = try reader.readData(of: "manifest.json")
                }
            }
        }
        guard let manifestBytes else {
            throw RootfsError("\(path) is not a docker save archive: it has no manifest.json", hint: "docker save -o FILE IMAGE writes one")
        }
        let entries = try decodeDocument([DockerArchiveManifestEntry].self, from: manifestBytes, what: "\(path): manifest.json")
        guard entries.count == 1 else {
            let names = entries.flatMap { $0.RepoTags ?? [] }.joined(separator: ", ")
            throw RootfsError("\(path) holds \(entries.count) images (\(names)); rootfs reads an archive of one",
                              hint: "docker save -o FILE IMAGE with one image")
        }
        let entry = entries[0]
        // A member the manifest names, through the symlinks docker save uses to share layers.
        func resolveMember(_ raw: String) throws -> [UInt8] {
            var name = try normalizeMemberName(Array(raw.utf8), archive: path)
            for _ in 0..<8 {
                guard let member = members[name] else {
                    throw RootfsError("\(path) has no member \(raw), which its manifest.json names")
                }
                if member.type == FileType.reg { return name }
                guard member.type == FileType.lnk, let link = member.link, !link.hasPrefix("/") else {
                    throw RootfsError("\(path): \(raw) is not a file")
                }
                name = try normalizeMemberName(parentPath(name) == [46] ? Array(link.utf8) : parentPath(name) + [47] + Array(link.utf8), archive: path)
            }
            throw RootfsError("\(path): \(raw) is a loop of symbolic links")
        }
        let configName = try resolveMember(entry.Config)
        let configBytes: [UInt8] = try {
            let reader = try ArchiveReader(path: path)
            while let (e, _) = try reader.next() {
                if (try? normalizeMemberName(e.pathBytes, archive: path)) == configName {
                    guard e.size <= documentLimit else { throw RootfsError("\(path): \(entry.Config) is too large") }
                    return try reader.readData(of: entry.Config)
                }
            }
            throw RootfsError("\(path) has no member \(entry.Config)")
        }()
        // docker save names the config by its digest (<hex>.json, or blobs/sha256/<hex>).
        let configDigest = SHA256.hexDigest(of: configBytes)
        let configBase = String(decoding: configName.split(separator: 47).last ?? [], as: UTF8.self)
        if let named = [configBase, String(configBase.dropLast(5))].first(where: { OCIDescriptor.sha256Hex("sha256:" + $0) != nil }), named != configDigest {
            throw RootfsError("\(path): the config \(entry.Config) does not match its digest (read sha256:\(configDigest))",
                              hint: "the archive is corrupt: save the image again")
        }
        let config = try decodeDocument(OCIImageConfig.self, from: configBytes, what: "\(path): \(entry.Config)")
        guard config.rootfs.diff_ids.count == entry.Layers.count else {
            throw RootfsError("\(path): manifest.json names \(entry.Layers.count) layers, the config \(config.rootfs.diff_ids.count)",
                              hint: "the archive is inconsistent: save the image again")
        }
        var layers: [LayerBlob] = []
        for (n, layer) in entry.Layers.enumerated() {
            let label = "layer \(n + 1) (\(layer)) of \(path)"
            let name = try resolveMember(layer)
            // docker save stores layers uncompressed: their digest is the config's diff_id.
            let hex = try OCIDescriptor(mediaType: "", digest: config.rootfs.diff_ids[n], size: 0).sha256Hex(in: "the diff_id of \(label)")
            layers.append(LayerBlob(origin: .member(archive: path, name: name), sha256: hex, size: nil,
                                    mediaType: OCIMediaType.layerTar, label: label))
        }
        return ResolvedImage(layers: layers, config: config)
    }
}

/// OCI architecture names (GOARCH) of the machines rootfs runs on.
public enum OCIArchitecture {
    public static var host: String {
        #if arch(x86_64)
        return "amd64"
        #elseif arch(arm64)
        return "arm64"
        #else
        return "unknown"
        #endif
    }

    /// The OCI name of a Debian/uname architecture name.
    public static func name(_ arch: String) -> String {
        switch arch {
        case "x86_64", "amd64": return "amd64"
        case "aarch64", "arm64": return "arm64"
        case "riscv64": return "riscv64"
        case "ppc64le", "ppc64el": return "ppc64le"
        case "s390x": return "s390x"
        default: return arch
        }
    }
}
