import CArchive
import Foundation

/// What a writer did, for the summary and the benchmark.
public struct WriteStats: Sendable, Equatable {
    public var entries = 0
    public var inputBytes: Int64 = 0
    public var outputBytes: Int64 = 0
}

/// A writer's progress callback: the statistics so far (`outputBytes`: written
/// so far, after compression). Called often; rate-limit what you show.
public typealias WriteProgress = @Sendable (WriteStats) -> Void

/// Streams a tree into a cpio or tar archive through libarchive: entries in
/// the walker's stable order, inode numbers assigned in that order, hard links
/// stored once (data with the first name), mtimes clamped to SOURCE_DATE_EPOCH.
struct TreeArchiver {
    var format: ArchiveWriteHandle.Format
    var compression: Compression
    var level: Int?
    var epoch: Int?
    /// Entries added to the archive when the tree lacks them (guest path without
    /// leading slash -> link target), e.g. the initrd's `init -> /sbin/init`.
    var syntheticLinks: [(path: String, target: String)] = []
    /// Called as the archive grows (entries, input bytes, bytes written so far).
    var progress: WriteProgress?

    func write(tree root: String, to output: String) throws -> WriteStats {
        let temporary = FS.siblingTemporaryPath(for: output)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RootfsError("cannot create \(output): \(FS.errnoText())") }
        var keep = false
        defer {
            close(fd)
            if !keep { unlink(temporary) }
        }
        var stats = try write(tree: root, fd: fd)
        if fsync(fd) != 0 { throw RootfsError("cannot write \(output): \(FS.errnoText())") }
        var st = stat()
        fstat(fd, &st)
        stats.outputBytes = Int64(st.st_size)
        try FS.rename(temporary, to: output)
        keep = true
        return stats
    }

    func write(tree root: String, fd: Int32) throws -> WriteStats {
        let threads = min(ProcessInfo.processInfo.activeProcessorCount, 8)
        let archive = try ArchiveWriteHandle(format: format, compression: compression, level: level, threads: threads)
        try archive.open(fd: fd)
        let entry = ArchiveEntryHandle()
        var stats = WriteStats()
        var nextInode: Int64 = 1
        var firstLink: [HardLinkKey: (path: [UInt8], ino: Int64)] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let missingSynthetic = syntheticLinks.filter { !FS.exists(root + "/" + $0.path) }

        try TreeWalker(root: root).walk { item in
            entry.clear()
            let st = item.stat
            entry.setPath(item.path)
            archive_entry_set_mode(entry.pointer, st.st_mode)
            archive_entry_set_uid(entry.pointer, Int64(st.st_uid))
            archive_entry_set_gid(entry.pointer, Int64(st.st_gid))
            archive_entry_set_mtime(entry.pointer, clamp(st.st_mtim.tv_sec), 0)
            archive_entry_set_nlink(entry.pointer, item.fileType == S_IFDIR ? 2 : UInt32(st.st_nlink))
            archive_entry_set_dev(entry.pointer, 0)
            var size: Int64 = 0
            switch item.fileType {
            case S_IFREG:
                if st.st_nlink > 1 {
                    let key = HardLinkKey(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
                    if let first = firstLink[key] {
                        archive_entry_set_ino64(entry.pointer, first.ino)
                        entry.setHardlink(first.path)
                        archive_entry_set_size(entry.pointer, 0)
                        try archive.writeHeader(entry)
                        try archive.finishEntry()
                        stats.entries += 1
                        return
                    }
                    firstLink[key] = (item.path, nextInode)
                }
                size = Int64(st.st_size)
            case S_IFLNK:
                entry.setSymlink(item.linkTarget ?? [])
            case S_IFCHR, S_IFBLK:
                archive_entry_set_rdev(entry.pointer, st.st_rdev)
            default:
                break
            }
            archive_entry_set_ino64(entry.pointer, nextInode)
            nextInode += 1
            archive_entry_set_size(entry.pointer, size)
            try archive.writeHeader(entry)
            if size > 0 {
                try copyContent(of: item, size: size, into: archive, buffer: buffer)
                stats.inputBytes += size
            }
            try archive.finishEntry()
            stats.entries += 1
            if let progress, stats.entries % 64 == 0 || size > 1 << 20 {
                stats.outputBytes = archive.bytesWritten
                progress(stats)
            }

            if item.path == [46] {
                let rootTime = clamp(st.st_mtim.tv_sec)
                for link in missingSynthetic {
                    entry.clear()
                    entry.setPath(Array(link.path.utf8))
                    archive_entry_set_mode(entry.pointer, S_IFLNK | 0o777)
                    archive_entry_set_mtime(entry.pointer, rootTime, 0)
                    archive_entry_set_nlink(entry.pointer, 1)
                    archive_entry_set_size(entry.pointer, 0)
                    archive_entry_set_uid(entry.pointer, 0)
                    archive_entry_set_gid(entry.pointer, 0)
                    archive_entry_set_ino64(entry.pointer, nextInode)
                    nextInode += 1
                    entry.setSymlink(Array(link.target.utf8))
                    try archive.writeHeader(entry)
                    try archive.finishEntry()
                    stats.entries += 1
                }
            }
        }
        try archive.close()
        stats.outputBytes = archive.bytesWritten
        return stats
    }

    private func clamp(_ seconds: Int) -> Int {
        guard let epoch else { return seconds }
        return min(seconds, epoch)
    }

    /// Copies exactly `size` bytes: a file that shrank meanwhile is padded with
    /// zeros, one that grew is cut, so the header stays true.
    private func copyContent(of item: TreeEntry, size: Int64, into archive: ArchiveWriteHandle,
                             buffer: UnsafeMutableRawBufferPointer) throws {
        let fd = try item.openContent()
        defer { close(fd) }
        var remaining = size
        while remaining > 0 {
            let want = Int(min(Int64(buffer.count), remaining))
            var n = read(fd, buffer.baseAddress, want)
            if n < 0 {
                if errno == EINTR { continue }
                throw RootfsError("cannot read \(item.pathString): \(FS.errnoText())")
            }
            if n == 0 {
                memset(buffer.baseAddress!, 0, want)
                n = want
            }
            try archive.writeData(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            remaining -= Int64(n)
        }
    }
}

struct HardLinkKey: Hashable {
    var dev: UInt64
    var ino: UInt64
}

/// Kata's initrd_builder.sh, in-process: a cpio newc archive of the tree with
/// `/init` pointing to `/sbin/init`, compressed with zstd (default) or gzip.
public struct InitrdWriter: Sendable {
    public var compression: Compression
    public var level: Int?
    public var epoch: Int?
    /// Called as the initrd grows (see `WriteProgress`).
    public var progress: WriteProgress?

    public init(compression: Compression = .zstd, level: Int? = nil, epoch: Int? = nil) {
        self.compression = compression
        self.level = level
        self.epoch = epoch
    }

    @discardableResult
    public func write(tree root: String, to output: String) throws -> WriteStats {
        try TreeArchiver(format: .cpioNewc, compression: compression, level: level, epoch: epoch,
                         syntheticLinks: [("init", "/sbin/init")], progress: progress).write(tree: root, to: output)
    }
}
