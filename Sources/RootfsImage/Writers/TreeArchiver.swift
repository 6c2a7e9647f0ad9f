import RootfsSupport
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
public struct TreeArchiver {
    var format: ArchiveWriteHandle.Format
    var compression: Compression
    var level: Int?
    var epoch: Int?
    /// Entries added to the archive when the tree lacks them (guest path without
    /// leading slash -> link target), e.g. the initrd's `init -> /sbin/init`.
    var syntheticLinks: [(path: String, target: String)] = []
    /// Called as the archive grows (entries, input bytes, bytes written so far).
    var progress: WriteProgress?
    /// Changes each item before it is written (rootless builds: owners and modes from the hook's tar).
    public var transform: ((inout TreeItem) throws -> Void)? = nil
    /// Which items go into the archive (nil: all), decided before `transform`: a remote
    /// engine's export of a whole container, of which only the tree is kept.
    public var include: ((TreeItem) -> Bool)? = nil
    /// gzip workers (nil: the machine's cores). The bytes are the same for any number.
    public var gzipWorkers: Int? = nil

    public init(format: ArchiveWriteHandle.Format, compression: Compression, level: Int? = nil, epoch: Int? = nil,
                syntheticLinks: [(path: String, target: String)] = [], progress: WriteProgress? = nil,
                transform: ((inout TreeItem) throws -> Void)? = nil) {
        self.format = format
        self.compression = compression
        self.level = level
        self.epoch = epoch
        self.syntheticLinks = syntheticLinks
        self.progress = progress
        self.transform = transform
    }

    func write(tree root: String, to output: String) throws -> WriteStats {
        try write(source: .directory(root), to: output)
    }

    public func write(source: TreeSource, to output: String) throws -> WriteStats {
        let temporary = FS.siblingTemporaryPath(for: output)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RootfsError("cannot create \(output): \(FS.errnoText())") }
        var keep = false
        defer {
            close(fd)
            if !keep { unlink(temporary) }
        }
        var stats = try write(source: source, fd: fd)
        var st = stat()
        fstat(fd, &st)
        stats.outputBytes = Int64(st.st_size)
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        keep = true
        return stats
    }

    func write(source: TreeSource, fd: Int32) throws -> WriteStats {
        let threads = Self.zstdThreads(processors: ProcessInfo.processInfo.activeProcessorCount)
        let archive = try ArchiveWriteHandle(format: format, compression: compression, level: level, threads: threads,
                                             gzipWorkers: gzipWorkers)
        try archive.open(fd: fd)
        let entry = ArchiveEntryHandle()
        var stats = WriteStats()
        var nextInode: Int64 = 1
        var inodes: [[UInt8]: Int64] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        // Synthetic links go where the canonical order puts them, unless the tree has that name.
        var pending = syntheticLinks.map { (path: Array($0.path.utf8), target: Array($0.target.utf8)) }
            .sorted { canonicalPrecedes($0.path, $1.path) }
        var rootTime = 0

        func writeSynthetic(before path: [UInt8]?) throws {
            while let link = pending.first {
                if let path {
                    if link.path == path { pending.removeFirst(); continue }
                    guard canonicalPrecedes(link.path, path) else { return }
                }
                pending.removeFirst()
                entry.clear()
                entry.setPath(link.path)
                entry.setMode(S_IFLNK | 0o777)
                entry.setModificationTime(rootTime)
                entry.setLinkCount(1)
                entry.setSize(0)
                entry.setOwner(uid: 0, gid: 0)
                entry.setInode(nextInode)
                nextInode += 1
                entry.setSymlink(link.target)
                try archive.writeHeader(entry)
                try archive.finishEntry()
                stats.entries += 1
            }
        }

        try source.walk { original in
            try Task.checkCancellation()
            if let include, !original.isRoot, !include(original) { return }
            var item = original
            try transform?(&item)
            if item.isRoot { rootTime = clamp(item.mtime) } else { try writeSynthetic(before: item.path) }
            entry.clear()
            entry.setPath(item.path)
            entry.setMode(mode_t(item.mode))
            entry.setOwner(uid: item.uid, gid: item.gid)
            entry.setModificationTime(clamp(item.mtime))
            entry.setLinkCount(item.nlink)
            entry.setDevice(0)
            if let first = item.hardLinkTo {
                entry.setInode(inodes[first] ?? 0)
                entry.setHardlink(first)
                entry.setSize(0)
                try archive.writeHeader(entry)
                try archive.finishEntry()
                stats.entries += 1
                return
            }
            switch item.fileType {
            case FileType.lnk: entry.setSymlink(item.linkTarget ?? [])
            case FileType.chr, FileType.blk: entry.setDeviceNumber(dev_t(item.rdev))
            default: break
            }
            if item.fileType == FileType.reg && item.nlink > 1 { inodes[item.path] = nextInode }
            entry.setInode(nextInode)
            nextInode += 1
            entry.setSize(item.size)
            try archive.writeHeader(entry)
            if item.size > 0 {
                try item.copyContent(buffer: buffer) { try archive.writeData($0) }
                stats.inputBytes += item.size
            }
            try archive.finishEntry()
            stats.entries += 1
            if let progress, stats.entries % 64 == 0 || item.size > 1 << 20 {
                stats.outputBytes = archive.bytesWritten
                progress(stats)
            }
        }
        try writeSynthetic(before: nil)
        try archive.close()
        stats.outputBytes = archive.bytesWritten
        return stats
    }

    /// zstd worker threads. zstd's multi-threaded mode keeps several 8 MiB jobs and their
    /// output buffers in flight (libarchive 3.6.2 cannot shrink them): on incompressible
    /// data two workers took `rootfs initrd` to 135 MB peak RSS (bench: 1 GB tree), one
    /// stays at 30 MB whatever the tree, and is still within 1.5x of `tar | zstd -T0`.
    static func zstdThreads(processors: Int) -> Int {
        _ = processors
        return 1
    }

    private func clamp(_ seconds: Int) -> Int {
        guard let epoch else { return seconds }
        return min(seconds, epoch)
    }
}

public struct HardLinkKey: Hashable {
    public var dev: UInt64
    public var ino: UInt64

    public init(dev: UInt64, ino: UInt64) {
        self.dev = dev
        self.ino = ino
    }
}

/// Kata's initrd_builder.sh, in-process: a cpio newc archive of the tree with
/// `/init` pointing to `/sbin/init`, compressed with zstd (default) or gzip.
public struct InitrdWriter: Sendable {
    public var compression: Compression
    public var level: Int?
    public var epoch: Int?
    /// Called as the initrd grows (see `WriteProgress`).
    public var progress: WriteProgress?
    /// gzip workers (nil: the machine's cores). The bytes are the same for any number.
    public var gzipWorkers: Int?

    public init(compression: Compression = .zstd, level: Int? = nil, epoch: Int? = nil) {
        self.compression = compression
        self.level = level
        self.epoch = epoch
    }

    @discardableResult
    public func write(tree root: String, to output: String) throws -> WriteStats {
        try write(source: .directory(root), to: output)
    }

    @discardableResult
    public func write(source: TreeSource, to output: String) throws -> WriteStats {
        var archiver = TreeArchiver(format: .cpioNewc, compression: compression, level: level, epoch: epoch,
                                    syntheticLinks: [("init", "/sbin/init")], progress: progress)
        archiver.gzipWorkers = gzipWorkers
        return try archiver.write(source: source, to: output)
    }
}
