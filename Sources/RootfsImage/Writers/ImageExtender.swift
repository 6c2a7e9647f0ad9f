import RootfsSupport
import CArchive
import Foundation

/// xcluster's `ximage`: adds overlays to an image that already exists, without
/// rebuilding the distro. Archives (tar, compressed or not; cpio initrds) are
/// read as a tree source, composed in a temporary directory and written again
/// in the same format and compression; a raw ext4 image (MBR, GPT or bare) is
/// read by Ext4Reader, composed the same way and written again by the native
/// writer at the same offset, size, UUID and label (an ordinary user, who cannot
/// extract owners and devices, gets the older in-place change with debugfs).
/// The result replaces IMAGE (or goes to `-o NEW`) only when complete.
public struct ImageExtender: Sendable {
    public var epoch: Int?
    public var runner = ProcessRunner()

    public init(epoch: Int? = nil) { self.epoch = epoch }

    public enum Kind: Equatable, Sendable {
        case tar(Compression)
        case initrd(Compression)
        /// An ext4 file system at this byte offset.
        case ext4(offset: Int64)

        /// The word of the result line: initrd, tar or ext4.
        public var name: String {
            switch self {
            case .tar: return "tar"
            case .initrd: return "initrd"
            case .ext4: return "ext4"
            }
        }
    }

    /// What kind of image `path` is, from its bytes.
    public static func detect(_ path: String) throws -> Kind {
        if let offset = try ext4Offset(path) { return .ext4(offset: offset) }
        guard let a = archive_read_new() else { throw RootfsError("libarchive: out of memory") }
        defer { archive_read_free(a) }
        archive_read_support_filter_all(a)
        archive_read_support_format_all(a)
        guard archive_read_open_filename(a, path, 1 << 16) == ARCHIVE_OK else {
            throw RootfsError("\(path) is neither an archive nor an ext4 disk image", hint: "extend works on tar, initrd (cpio) and raw ext4 images")
        }
        var e: OpaquePointer?
        let first = archive_read_next_header(a, &e)
        guard first == ARCHIVE_OK || first == ARCHIVE_WARN else {
            throw RootfsError("\(path) is neither an archive nor an ext4 disk image", hint: "extend works on tar, initrd (cpio) and raw ext4 images")
        }
        let filter = archive_filter_code(a, 0)
        let compression: Compression = filter == ARCHIVE_FILTER_GZIP ? .gzip : filter == ARCHIVE_FILTER_ZSTD ? .zstd : .none
        if filter != ARCHIVE_FILTER_NONE && compression == .none {
            throw RootfsError("\(path) is compressed with \(String(cString: archive_filter_name(a, 0))), which rootfs does not write",
                              hint: "recompress it with gzip or zstd first")
        }
        let format = archive_format(a) & ARCHIVE_FORMAT_BASE_MASK
        if format == ARCHIVE_FORMAT_CPIO { return .initrd(compression) }
        if format == ARCHIVE_FORMAT_TAR { return .tar(compression) }
        throw RootfsError("\(path) is a \(String(cString: archive_format_name(a))) archive; extend writes tar and cpio only")
    }

    /// The offset of an ext4 file system: bare (0), or the first partition of an MBR or GPT disk
    /// (`PartitionProbe`: a corrupt table is an error, not a trap). nil: not ext4.
    static func ext4Offset(_ path: String) throws -> Int64? {
        guard let file = try? OwnedFileDescriptor(path: path, flags: O_RDONLY) else { return nil }
        func isExt4(at offset: Int64) -> Bool {
            guard let magic = try? file.read(count: 2, at: offset + 1024 + 56) else { return false }
            return magic == [0x53, 0xef]
        }
        if isExt4(at: 0) { return 0 }
        let found = try PartitionProbe.probe(what: path, size: try file.size()) { offset, count in try file.read(count: count, at: offset) }
        guard let start = found.firstPartitionOffset, start > 0, start <= Int64.max - 2048 else { return nil }
        return isExt4(at: start) ? start : nil
    }

    public func extend(image: String, overlays: [OverlaySpec], output: String?) async throws -> (Kind, Int64) {
        let kind = try Self.detect(image)
        let target = FS.absolute(output ?? image)
        switch kind {
        case .tar(let c), .initrd(let c):
            let work = try FS.makeSiblingTemporaryDirectory(for: target)
            defer { FS.remove(work) }
            try TreeExtractor(destination: work + "/tree").extract(.archive(FS.absolute(image)))
            try OverlayApplier(tree: GuestTree(root: work + "/tree")).apply(overlays)
            let stats: WriteStats
            if case .tar = kind {
                stats = try TarWriter(compression: c, epoch: epoch).write(source: .directory(work + "/tree"), to: target)
            } else {
                stats = try InitrdWriter(compression: c, epoch: epoch).write(source: .directory(work + "/tree"), to: target)
            }
            return (kind, stats.outputBytes)
        case .ext4(let offset):
            // The native rewrite needs root to extract the image's owners and devices;
            // an ordinary user keeps the debugfs path, which changes the image in place.
            if geteuid() != 0 { return (kind, try await extendWithDebugfs(image: image, offset: offset, overlays: overlays, target: target)) }
            return (kind, try rewriteExt4(image: FS.absolute(image), offset: offset, overlays: overlays, target: target))
        }
    }

    /// The image's own tree (Ext4Reader) with the overlays laid over it inside the
    /// guest tree (OverlayApplier: `/lib -> usr/lib` is followed, a file where the
    /// overlay has a directory is replaced), written again by the native writer at
    /// the same offset, with the file system's UUID and label, into a copy of the
    /// partition table: the disk keeps its layout and size (a bare file system grows
    /// if the content needs more), and stays sparse.
    func rewriteExt4(image: String, offset: Int64, overlays: [OverlaySpec], target: String) throws -> Int64 {
        let old = try Ext4Volume(path: image, offset: offset)
        let oldBytes = try Checked.multiply(Int64(old.blocksCount), Int64(old.blockSize), "the size of \(image)'s file system")
        let imageBytes = FS.fileSize(image)
        let work = try FS.makeSiblingTemporaryDirectory(for: target)
        defer { FS.remove(work) }
        try TreeExtractor(destination: work + "/tree").extract(.ext4(path: image, offset: offset))
        try OverlayApplier(tree: GuestTree(root: work + "/tree")).apply(overlays)
        let tree = TreeSource.directory(work + "/tree")
        let label = String(decoding: old.superblock.volumeName.prefix { $0 != 0 }, as: UTF8.self)
        var writer = Ext4Writer(label: label, uuid: old.superblock.uuid, epoch: epoch, freeSpaceMiB: 0)
        var plan = try writer.plan(source: tree)
        if plan.filesystemBytes < oldBytes {
            // Free space that keeps the file system at (just under) its old size.
            var free = Int((oldBytes - plan.filesystemBytes) >> 20)
            while free > 0 {
                writer.freeSpaceMiB = free
                let candidate = try writer.plan(source: tree)
                if candidate.filesystemBytes <= oldBytes { plan = candidate; break }
                free -= max(1, free / 32)
            }
            if plan.filesystemBytes > oldBytes {
                writer.freeSpaceMiB = 0
                plan = try writer.plan(source: tree)
            }
        }
        let tail = offset + oldBytes < imageBytes ? imageBytes - (offset + oldBytes) : 0
        if plan.filesystemBytes > oldBytes && (offset > 0 || tail > 0) {
            throw RootfsError("the overlays need a file system of \(plan.filesystemBytes >> 20) MiB; the partition of \(image) holds \(oldBytes >> 20) MiB",
                              hint: "write the image again with more room (rootfs image --free-space MB), then extend it")
        }
        let temporary = FS.siblingTemporaryPath(for: target)
        var keep = false
        defer { if !keep { unlink(temporary) } }
        let output = try OwnedFileDescriptor(path: temporary, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o644, name: target)
        let size = max(imageBytes, offset + plan.filesystemBytes)
        guard ftruncate(output.raw, off_t(size)) == 0 else { throw RootfsError("cannot size \(target): \(FS.errnoText())") }
        // What is outside the file system (partition tables, a DAX header, the GPT backup), copied sparsely.
        let input = try OwnedFileDescriptor(path: image, flags: O_RDONLY)
        for (start, count) in [(Int64(0), offset), (offset + oldBytes, tail)] where count > 0 {
            var done: Int64 = 0
            while done < count {
                let chunk = try input.read(count: Int(min(count - done, 1 << 20)), at: start + done)
                guard !chunk.isEmpty else { break }
                if chunk.contains(where: { $0 != 0 }) { try output.writeAll(chunk, at: start + done) }
                done += Int64(chunk.count)
            }
        }
        try writer.write(plan: plan, source: tree, fd: output.raw, offset: offset, name: target)
        try Task.checkCancellation()
        try FS.rename(temporary, to: target)
        keep = true
        return size
    }

    /// The ordinary user's path: debugfs adds the overlays to a copy of the image.
    func extendWithDebugfs(image: String, offset: Int64, overlays: [OverlaySpec], target: String) async throws -> Int64 {
        let work = try FS.makeSiblingTemporaryDirectory(for: target)
        defer { FS.remove(work) }
        // The overlays, composed in an empty directory first: the same checks as for a tree.
        try FS.makeDirectories(work + "/overlay")
        try OverlayApplier(tree: GuestTree(root: work + "/overlay")).apply(overlays)
        let commands = try DebugfsScript.commands(for: work + "/overlay", epoch: epoch)
        guard FileManager.default.createFile(atPath: work + "/cmds", contents: Data(commands)) else {
            throw RootfsError("cannot write \(work)/cmds: \(FS.errnoText())")
        }
        let copy = work + "/image"
        try FS.copyFile(FS.absolute(image), to: copy)
        let out = try await runner.capture(ToolCommand("debugfs", ["-w", "-f", work + "/cmds", "\(copy)?offset=\(offset)"]))
        let problems = (out.standardError + "\n" + out.standardOutput).split(separator: "\n")
            .filter { $0.contains("Could not") || $0.contains("No free space") || $0.contains("already exists") && !$0.contains("mkdir") }
        if !problems.isEmpty {
            throw RootfsError("debugfs could not add the overlays to \(image)", hint: "grow the image (rootfs image --free-space) or rebuild",
                              details: problems.prefix(10).map(String.init))
        }
        try FS.rename(copy, to: target)
        return FS.fileSize(target)
    }
}


/// debugfs commands that lay a directory over an ext4 file system: directories
/// made, files and links replaced, modes, owners and times set. Every guest
/// path and link target is passed as one quoted word (`DebugfsCommand`), so no
/// byte of it can end the line or start a command; names debugfs cannot
/// express (NUL, LF, CR) are refused.
enum DebugfsScript {
    static func commands(for root: String, epoch: Int?) throws -> [UInt8] {
        var out: [UInt8] = []
        try TreeWalker(root: root).walk { entry in
            guard entry.path != [46] else { return }
            let path: [UInt8] = [47] + entry.path
            let what = "overlay path \(debugName(path))"
            let st = entry.stat
            let host: [UInt8] = Array(root.utf8) + [47] + entry.path
            func emit(_ c: DebugfsCommand) throws { out += try c.line(what: what) }
            switch entry.fileType {
            case S_IFDIR:
                try emit(DebugfsCommand("mkdir").quoted(path, what: what))
            case S_IFREG:
                try emit(DebugfsCommand("rm").quoted(path, what: what))
                try emit(DebugfsCommand("write").quoted(host, what: what).quoted(path, what: what))
            case S_IFLNK:
                let target = entry.linkTarget ?? []
                try emit(DebugfsCommand("rm").quoted(path, what: what))
                try emit(DebugfsCommand("symlink").quoted(path, what: what)
                    .quoted(target, what: "the target of the link \(debugName(path))"))
            default:
                throw RootfsError("overlay \(debugName(path)): special files cannot be added to an ext4 image by extend")
            }
            let mtime = epoch.map { min($0, st.st_mtim.tv_sec) } ?? st.st_mtim.tv_sec
            let sif = try DebugfsCommand("sif").quoted(path, what: what)
            try emit(sif.literal("mode").literal("0" + String(st.st_mode, radix: 8)))
            try emit(sif.literal("uid").literal(String(st.st_uid)))
            try emit(sif.literal("gid").literal(String(st.st_gid)))
            try emit(sif.literal("mtime").literal("@\(mtime)"))
        }
        return out
    }
}

extension ImageExtender.Kind: CustomStringConvertible {
    /// In a user's words (`a zstd initrd`), never Swift's enum dump (`initrd(RootfsKit.Compression.zstd)`).
    public var description: String {
        switch self {
        case .tar(.none): return "an uncompressed tar"
        case .tar(let c): return "a \(c.rawValue) tar"
        case .initrd(.none): return "an uncompressed initrd"
        case .initrd(let c): return "a \(c.rawValue) initrd"
        case .ext4(offset: 0): return "a bare ext4 file system"
        case .ext4(let offset): return "the ext4 file system of a disk image (at byte \(offset))"
        }
    }
}
