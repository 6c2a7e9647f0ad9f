import RootfsSupport
import CArchive
import Foundation

/// xcluster's `ximage`: adds overlays to an image that already exists, without
/// rebuilding the distro. Archives (tar, compressed or not; cpio initrds) are
/// read as a tree source, composed in a temporary directory and written again
/// in the same format and compression; a raw ext4 image (MBR, GPT or bare) is
/// read by Ext4Reader, composed the same way and written again by the native
/// writer at the same offset, size, UUID and label (an ordinary user, who cannot
/// extract owners and devices, keeps them from the image's inodes: RootlessTree).
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
            let tree = try Self.compose(.archive(FS.absolute(image)), overlays: overlays, work: work)
            let stats: WriteStats
            if case .tar = kind {
                stats = try TarWriter(compression: c, epoch: epoch).write(source: tree, to: target)
            } else {
                stats = try InitrdWriter(compression: c, epoch: epoch).write(source: tree, to: target)
            }
            return (kind, stats.outputBytes)
        case .ext4(let offset):
            return (kind, try rewriteExt4(image: FS.absolute(image), offset: offset, overlays: overlays, target: target))
        }
    }

    /// The image's tree with the overlays laid over it, in `work/tree`, as the source the
    /// writer reads. Root extracts with real owners and device nodes. An ordinary user cannot
    /// put them on disk: they are kept aside from the image's own inodes or headers
    /// (RootlessTree, as a rootless build does), the overlays are laid over the extracted
    /// content, and the tree goes to the writer as a tar with them restored (what the
    /// overlays added is root:root). No tool is ever fed text made from guest data.
    static func compose(_ source: TreeSource, overlays: [OverlaySpec], work: String) throws -> TreeSource {
        let root = work + "/tree"
        if geteuid() == 0 {
            try TreeExtractor(destination: root).extract(source)
            try OverlayApplier(tree: GuestTree(root: root)).apply(overlays)
            return .directory(root)
        }
        let rootless = RootlessTree(root: root)
        try rootless.extract(source: source)
        try OverlayApplier(tree: GuestTree(root: root)).apply(overlays)
        try rootless.writeTar(to: work + "/tree.tar", epoch: nil)
        return .archive(work + "/tree.tar")
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
        let tree = try Self.compose(.ext4(path: image, offset: offset), overlays: overlays, work: work)
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
