import RootfsSupport
import CArchive
import Foundation

/// One object of a tree as every writer sees it, whatever the tree came from.
/// Paths are relative, raw bytes, "." is the root, never absolute, never `..`.
public struct TreeItem {
    public var path: [UInt8]
    /// The full mode: file type and permission bits.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var mtime: Int
    /// The content size of a regular file (0 for the extra names of a hard link).
    public var size: Int64
    public var linkTarget: [UInt8]?
    /// For the second and later names of a hard-linked file: the first name, in walk order.
    public var hardLinkTo: [UInt8]?
    public var nlink: UInt32
    public var rdev: UInt64
    /// Reads the next bytes of a regular file's content (0 at the end); valid only during the visit.
    public var readContent: ((UnsafeMutableRawBufferPointer) throws -> Int)?

    public var fileType: UInt32 { mode & 0o170000 }
    public var permissions: UInt32 { mode & 0o7777 }
    public var pathString: String { String(decoding: path, as: UTF8.self) }
    public var isRoot: Bool { path == [46] }

    /// Copies the content into `body` chunk by chunk, exactly `size` bytes (a short
    /// source is padded with zeros so headers written before stay true).
    public func copyContent(buffer: UnsafeMutableRawBufferPointer, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard size > 0 else { return }
        var remaining = size
        while remaining > 0 {
            // Ctrl-C / SIGTERM cancel the task: stop between chunks of a big file.
            try Task.checkCancellation()
            let want = Int(min(Int64(buffer.count), remaining))
            var n = try readContent?(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want])) ?? 0
            if n == 0 {
                memset(buffer.baseAddress!, 0, want)
                n = want
            }
            try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            remaining -= Int64(n)
        }
    }
}

/// Where a rootfs is read from: a directory, a tar archive (plain, gzip,
/// zstd, xz: whatever libarchive reads), or an ext4 file system (bare, or the
/// first partition of an MBR/GPT disk image, read in process by Ext4Reader).
/// Every writer consumes it through
/// `walk`, which yields items in one canonical order (parents first, names
/// sorted bytewise), so a tree gives the same bytes from either source.
public enum TreeSource: Sendable, CustomStringConvertible {
    case directory(String)
    case archive(String)
    /// An ext4 file system starting at byte `offset` of the file (0: a bare file system).
    case ext4(path: String, offset: Int64)
    /// A container image's layers applied in order (OCI/ImageTreeReader.swift).
    case image(ImageReference)

    /// A directory, an ext4 image (bare or partitioned) or an archive file, detected from
    /// what `path` is, or an image named by its transport (`oci:DIR[:TAG]`, `docker-archive:FILE`).
    public static func open(_ path: String, option: String = "TREE") throws -> TreeSource {
        if let image = try ImageReference.parse(path, option: option) { return .image(image) }
        let absolute = FS.absolute(path)
        if FS.isDirectory(absolute) { return .directory(absolute) }
        guard FS.isRegularFile(absolute) else {
            throw RootfsError("\(option) \(path) does not exist or is neither a directory nor an archive file",
                              hint: "give a rootfs directory, a tar archive (.tar, .tar.gz, .tar.zst), a raw ext4 image, or an image: \(ImageReference.transportList)")
        }
        if let offset = try ImageExtender.ext4Offset(absolute) { return .ext4(path: absolute, offset: offset) }
        return .archive(absolute)
    }

    public var path: String {
        switch self {
        case .directory(let p), .archive(let p), .ext4(let p, _): return p
        case .image(let image): return image.path
        }
    }

    public var description: String {
        switch self {
        case .directory(let p): return "directory \(p)"
        case .archive(let p): return "archive \(p)"
        case .ext4(let p, 0): return "ext4 image \(p)"
        case .ext4(let p, let offset): return "ext4 file system at byte \(offset) of \(p)"
        case .image(let image): return image.description
        }
    }

    /// Visits every item in canonical order.
    public func walk(_ visit: (TreeItem) throws -> Void) throws {
        switch self {
        case .directory(let root): try DirectoryTreeReader(root: root).walk(visit)
        case .archive(let file): try ArchiveTreeReader(path: file).walk(visit)
        case .ext4(let file, let offset): try Ext4Reader(path: file, offset: offset).walk(visit)
        case .image(let image): try ImageTreeReader(reference: image).walk(visit)
        }
    }
}

/// File type bits of a mode, as UInt32 (Glibc's S_IF* are ambiguous in Swift).
public enum FileType {
    public static let reg: UInt32 = 0o100000
    static let dir: UInt32 = 0o040000
    static let lnk: UInt32 = 0o120000
    public static let chr: UInt32 = 0o020000
    public static let blk: UInt32 = 0o060000
    public static let ifo: UInt32 = 0o010000
    public static let sock: UInt32 = 0o140000
    static let all: [UInt32] = [reg, dir, lnk, chr, blk, ifo, sock]
}

/// Compares paths the way the canonical order sorts them: component by component, bytewise.
func canonicalPrecedes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    if a == [46] { return b != [46] }
    if b == [46] { return false }
    let ca = a.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
    let cb = b.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true)
    for (x, y) in zip(ca, cb) where x != y {
        return x.lexicographicallyPrecedes(y)
    }
    return ca.count < cb.count
}

/// The parent of a relative path ("." for a top-level name).
func parentPath(_ path: [UInt8]) -> [UInt8] {
    guard let slash = path.lastIndex(of: UInt8(ascii: "/")) else { return [46] }
    return Array(path[..<slash])
}

/// Normalizes an archive member name: drops leading "./" and "/"-runs, refuses
/// absolute names and `..` components. Returns "." for the root.
func normalizeMemberName(_ raw: [UInt8], archive: String) throws -> [UInt8] {
    if raw.first == UInt8(ascii: "/") {
        throw RootfsError("\(archive) holds an absolute member name: \(String(decoding: raw, as: UTF8.self))",
                          hint: "rootfs archives hold relative names (tar -C DIR -cf FILE .); refusing to write outside the tree")
    }
    var parts: [ArraySlice<UInt8>] = []
    for part in raw.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
        if part.elementsEqual([46]) { continue }
        if part.elementsEqual([46, 46]) {
            throw RootfsError("\(archive) holds a member name with '..': \(String(decoding: raw, as: UTF8.self))",
                              hint: "refusing an archive that could write outside the tree")
        }
        parts.append(part)
    }
    if parts.isEmpty { return [46] }
    return Array(parts.joined(separator: [UInt8(ascii: "/")]))
}

/// Reads a directory through TreeWalker (no link followed), hard links keyed by device and inode.
struct DirectoryTreeReader {
    var root: String

    func walk(_ visit: (TreeItem) throws -> Void) throws {
        var firstName: [HardLinkKey: [UInt8]] = [:]
        try TreeWalker(root: root).walk { entry in
            let st = entry.stat
            var item = TreeItem(path: entry.path, mode: UInt32(st.st_mode), uid: st.st_uid, gid: st.st_gid,
                                mtime: st.st_mtim.tv_sec, size: 0, linkTarget: entry.linkTarget, hardLinkTo: nil,
                                nlink: entry.fileType == S_IFDIR ? 2 : UInt32(st.st_nlink), rdev: UInt64(st.st_rdev))
            switch entry.fileType {
            case S_IFREG:
                if st.st_nlink > 1 {
                    let key = HardLinkKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
                    if let first = firstName[key] {
                        item.hardLinkTo = first
                        try visit(item)
                        return
                    }
                    firstName[key] = entry.path
                }
                item.size = Int64(st.st_size)
                let file = LazyFile(entry: entry)
                item.readContent = { buffer in try file.read(into: buffer) }
                try visit(item)
            case S_IFCHR, S_IFBLK:
                try visit(item)
            default:
                item.rdev = 0
                try visit(item)
            }
        }
    }
}

/// A tree file opened on first read, closed when dropped.
final class LazyFile {
    private let entry: TreeEntry
    private var fd: Int32 = -1
    init(entry: TreeEntry) { self.entry = entry }
    deinit { if fd >= 0 { close(fd) } }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if fd < 0 { fd = try entry.openContent() }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno != EINTR { throw RootfsError("cannot read \(entry.pathString): \(FS.errnoText())") }
        }
    }
}

/// Reads a tar (or cpio) archive. An archive already in canonical order with
/// every parent present (as rootfs writes them) is streamed in one pass after a
/// header-only pass; any other archive is read once into memory (headers) and a
/// spool file (content), then visited in canonical order. Ownership always comes
/// from the archive, never from the disk.
struct ArchiveTreeReader {
    var path: String

    private struct Header {
        var item: TreeItem
        /// Offset of the content in the spool, for the spool path.
        var spoolOffset: Int64 = -1
    }

    func walk(_ visit: (TreeItem) throws -> Void) throws {
        let scan = try scanHeaders()
        if scan.canonical {
            try stream(linkCounts: scan.linkCounts, synthesizeRoot: !scan.hasRoot, visit)
        } else {
            try spool(visit)
        }
    }

    private func reader() throws -> ArchiveReader { try ArchiveReader(path: path) }

    /// The largest member size read from an archive: ext4's largest file with 4 KiB blocks.
    static let maxMemberSize: Int64 = 1 << 44

    private func nextHeader(_ r: ArchiveReader) throws -> OpaquePointer? {
        var e: OpaquePointer?
        let rc = archive_read_next_header(r.pointer, &e)
        if rc == ARCHIVE_EOF { return nil }
        // OK or WARN only: ARCHIVE_RETRY means a damaged header, whose entries would be lost.
        guard rc == ARCHIVE_OK || rc == ARCHIVE_WARN, let e else {
            throw RootfsError("cannot read the archive \(path): \(archive_error_string(r.pointer).map { String(cString: $0) } ?? "?")",
                              hint: "give a tar archive (plain, gzip or zstd) or a rootfs directory")
        }
        return e
    }

    private func item(from e: OpaquePointer) throws -> TreeItem {
        let rawName = archive_entry_pathname(e).map { Array(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0))) } ?? []
        let name = try normalizeMemberName(rawName, archive: path)
        var mode = UInt32(archive_entry_mode(e))
        let hardlink = try archive_entry_hardlink(e).map {
            try normalizeMemberName(Array(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0))), archive: path)
        }
        if hardlink != nil && mode & 0o170000 == 0 { mode |= FileType.reg }
        let symlink = archive_entry_symlink(e).map { Array(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0))) }
        let type = mode & 0o170000
        guard FileType.all.contains(type) else {
            throw RootfsError("\(path): member \(String(decoding: name, as: UTF8.self)) has an unknown file type")
        }
        if name == [46] && type != FileType.dir {
            throw RootfsError("\(path): the root member is not a directory")
        }
        let isDevice = type == FileType.chr || type == FileType.blk
        // A size from the archive (a pax sparse member's realsize can say 2^63-1) is checked
        // before any writer rounds or adds to it: beyond 16 TiB (ext4's largest file) is refused.
        let size = type == FileType.reg && hardlink == nil ? archive_entry_size(e) : 0
        guard size >= 0, size <= Self.maxMemberSize else {
            throw RootfsError("\(path): member \(String(decoding: name, as: UTF8.self)) claims \(size) bytes, more than any image holds (at most 16 TiB)",
                              hint: "the archive is corrupt or crafted (a sparse member's real size)")
        }
        return TreeItem(path: name, mode: mode, uid: UInt32(truncatingIfNeeded: archive_entry_uid(e)),
                        gid: UInt32(truncatingIfNeeded: archive_entry_gid(e)), mtime: archive_entry_mtime(e),
                        size: size,
                        linkTarget: type == FileType.lnk ? (symlink ?? []) : nil, hardLinkTo: hardlink,
                        nlink: type == FileType.dir ? 2 : 1,
                        rdev: isDevice ? UInt64(archive_entry_rdev(e)) : 0)
    }

    private struct Scan {
        var canonical = true
        var hasRoot = false
        var linkCounts: [[UInt8]: UInt32] = [:]
    }

    /// Headers only: is the archive in canonical order, with parents before children and no duplicates?
    private func scanHeaders() throws -> Scan {
        let r = try reader()
        var scan = Scan()
        var previous: [UInt8]?
        var directories = Set<[UInt8]>()
        // Plain files seen so far: a hard link in canonical order names one of them. A link
        // to a link (c -> b -> a) or to a later member goes the spool's way, which resolves
        // every link to its root before grouping.
        var files = Set<[UInt8]>()
        while let e = try nextHeader(r) {
            let it = try item(from: e)
            if let target = it.hardLinkTo {
                scan.linkCounts[target, default: 1] += 1
                if !files.contains(target) { scan.canonical = false }
            } else if it.fileType == FileType.reg {
                files.insert(it.path)
            }
            if it.isRoot { scan.hasRoot = previous == nil }
            if let previous, !canonicalPrecedes(previous, it.path) { scan.canonical = false }
            if !it.isRoot && !directories.contains(parentPath(it.path)) && parentPath(it.path) != [46] { scan.canonical = false }
            if it.isRoot && previous != nil { scan.canonical = false }
            if it.fileType == FileType.dir { directories.insert(it.path) }
            previous = it.path
        }
        return scan
    }

    private func rootItem(mtime: Int = 0) -> TreeItem {
        TreeItem(path: [46], mode: FileType.dir | 0o755, uid: 0, gid: 0, mtime: mtime, size: 0,
                 linkTarget: nil, hardLinkTo: nil, nlink: 2, rdev: 0)
    }

    private func stream(linkCounts: [[UInt8]: UInt32], synthesizeRoot: Bool, _ visit: (TreeItem) throws -> Void) throws {
        let r = try reader()
        if synthesizeRoot { try visit(rootItem()) }
        while let e = try nextHeader(r) {
            var it = try item(from: e)
            if it.fileType == FileType.reg {
                it.nlink = linkCounts[it.hardLinkTo ?? it.path] ?? 1
            }
            if it.size > 0 {
                let pointer = r.pointer
                let name = it.pathString
                let archivePath = path
                it.readContent = { buffer in
                    let n = archive_read_data(pointer, buffer.baseAddress, buffer.count)
                    if n < 0 {
                        throw RootfsError("cannot read \(name) from \(archivePath): \(archive_error_string(pointer).map { String(cString: $0) } ?? "?")")
                    }
                    return n
                }
            }
            try visit(it)
        }
    }

    /// Any order: headers in memory, contents in an unlinked spool file, then canonical order.
    private func spool(_ visit: (TreeItem) throws -> Void) throws {
        let spoolPath = FS.siblingTemporaryPath(for: NSTemporaryDirectory() + "/rootfs-tree-spool")
        let fd = open(spoolPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RootfsError("cannot create a spool file in \(NSTemporaryDirectory()): \(FS.errnoText())") }
        unlink(spoolPath)
        defer { close(fd) }
        var headers: [[UInt8]: Header] = [:]
        var spoolEnd: Int64 = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let r = try reader()
        while let e = try nextHeader(r) {
            let it = try item(from: e)
            // tar stores a name given twice as a hard link to itself: the earlier member stands.
            if it.hardLinkTo == it.path { continue }
            var h = Header(item: it)
            if it.size > 0 {
                h.spoolOffset = spoolEnd
                var remaining = it.size
                while remaining > 0 {
                    let n = archive_read_data(r.pointer, buffer.baseAddress, min(buffer.count, Int(remaining)))
                    if n < 0 { throw RootfsError("cannot read \(it.pathString) from \(path)") }
                    if n == 0 { break }
                    var spool = OwnedFileDescriptor(taking: fd, name: "the spool file")
                    defer { _ = spool.release() }  // borrowed: `fd` is closed by its own defer
                    try spool.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), at: spoolEnd)
                    spoolEnd += Int64(n)
                    remaining -= Int64(n)
                }
            }
            // A later member of the same name replaces the earlier one, as tar does.
            if let old = headers[it.path], old.item.fileType == FileType.dir, it.fileType == FileType.dir {
                h.item.mode = it.mode
            }
            headers[it.path] = h
        }
        if headers[[46]] == nil { headers[[46]] = Header(item: rootItem()) }
        // Parents that the archive left out.
        for p in Array(headers.keys) {
            var parent = parentPath(p)
            while parent != [46] && headers[parent] == nil {
                var dir = rootItem()
                dir.path = parent
                headers[parent] = Header(item: dir)
                parent = parentPath(parent)
            }
        }
        // Hard-link groups: every link resolved to its root (c -> b -> a is a's group, whatever
        // the members' order), then the first name in canonical order holds the content.
        var groups: [[UInt8]: [[UInt8]]] = [:]
        for (p, h) in headers {
            guard h.item.hardLinkTo != nil else { continue }
            var root = p
            var seen: Set<[UInt8]> = [p]
            while let next = headers[root]?.item.hardLinkTo {
                guard seen.insert(next).inserted else {
                    throw RootfsError("\(path): hard link \(String(decoding: p, as: UTF8.self)) is part of a cycle of hard links",
                                      hint: "the archive is damaged: each hard link must lead to a regular member")
                }
                root = next
            }
            guard headers[root]?.item.fileType == FileType.reg, headers[root]?.item.hardLinkTo == nil else {
                throw RootfsError("\(path): hard link \(String(decoding: p, as: UTF8.self)) points to a missing or non-regular member")
            }
            groups[root, default: [root]].append(p)
        }
        // Sorted owners: the same bytes every run.
        for owner in groups.keys.sorted(by: canonicalPrecedes) {
            var members = groups[owner]!
            members.sort(by: canonicalPrecedes)
            let first = members[0]
            let data = headers[owner]!
            for m in members {
                var h = headers[m]!
                h.item.nlink = UInt32(members.count)
                if m == first {
                    h.item.hardLinkTo = nil
                    h.item.size = data.item.size
                    h.spoolOffset = data.spoolOffset
                    h.item.mode = data.item.mode; h.item.uid = data.item.uid; h.item.gid = data.item.gid
                    h.item.mtime = data.item.mtime
                } else {
                    h.item.hardLinkTo = first
                    h.item.size = 0
                    h.spoolOffset = -1
                }
                headers[m] = h
            }
        }
        for p in headers.keys.sorted(by: canonicalPrecedes) {
            var h = headers[p]!
            if h.item.size > 0 {
                var position = h.spoolOffset
                h.item.readContent = { buf in
                    let n = pread(fd, buf.baseAddress, buf.count, off_t(position))
                    if n < 0 { throw RootfsError("cannot read the spool file: \(FS.errnoText())") }
                    position += Int64(n)
                    return n
                }
            }
            try visit(h.item)
        }
    }
}
