import RootfsSupport
import Foundation

/// Where a file system goes inside a disk image being written: the open
/// image (under its temporary name), the offset of the file system, and
/// the bytes the partition table needs after it (GPT's backup).
public struct FilesystemTarget: Sendable {
    public var source: TreeSource
    /// A directory holding the tree: the source's own, or a materialized copy for writers that read one.
    public var directory: String
    public var fd: Int32
    /// The image's temporary path (tools that write by name, such as mke2fs, are given it).
    public var image: String
    public var offset: Int64
    public var tail: Int64
    /// The final output path, for messages.
    public var output: String
    public var uuid: String
    /// The image's size is rounded up to a multiple of this (`--align`; 2 MiB multiples with the DAX header).
    public var alignment: Int64 = 1 << 20
    /// The largest disk the partition table can describe (an MBR: 2 TiB), and what it is.
    public var limit: (bytes: Int64, table: String)?

    /// The partition for a file system of `filesystemBytes`: up to the end of the image rounded
    /// up to `alignment`. A disk the partition table cannot describe is refused here, before the
    /// writers write anything into the image.
    public func partitionBytes(forFilesystem filesystemBytes: Int64) throws -> Int64 {
        let what = "the size of \(output)"
        let used = try Checked.add(try Checked.add(offset, filesystemBytes, what), tail, what)
        let disk = try Checked.add(used, alignment - 1, what) / alignment * alignment
        if let limit, disk > limit.bytes {
            throw RootfsError("\(output) would be \(MBR.describe(disk)), more than \(limit.table) can describe (2 TiB: 32-bit sector numbers)",
                              hint: "write a smaller image (less --free-space, a smaller --align), or --partition-table gpt without --dax")
        }
        return disk - offset - tail
    }

    /// Gives the image its final size once the file system's size is known (sparse): the partition
    /// rounded up to `alignment`.
    func size(filesystemBytes: Int64) throws {
        let partition = try partitionBytes(forFilesystem: filesystemBytes)
        guard ftruncate(fd, off_t(offset + partition + tail)) == 0 else {
            throw RootfsError("cannot size \(output): \(FS.errnoText())")
        }
    }
}

/// What a file system writer wrote.
public struct FilesystemWritten: Sendable {
    public var filesystemBytes: Int64
    public var inputBytes: Int64
}

/// Writes the file system of a disk image at `target.offset` and sizes the image.
/// The disk writer (partition table, DAX header, rename) is the same for all of them.
public protocol FilesystemWriter: Sendable {
    /// Whether the writer reads a directory (a tar source is then extracted first).
    var readsDirectory: Bool { get }
    func write(into target: FilesystemTarget, disk: DiskImageWriter) async throws -> FilesystemWritten
}

extension FilesystemType {
    /// The writer of this file system (for ext4, the one `--ext4-writer` names; the native
    /// writer lays out 4096-byte blocks only, so other block sizes are written by mke2fs).
    public func writer(ext4: Ext4WriterKind, blockSize: Int = 4096) -> any FilesystemWriter {
        switch self {
        case .ext4: return ext4 == .native && blockSize == 4096 ? NativeExt4Filesystem() : Mke2fsFilesystem()
        case .erofs: return ErofsFilesystem()
        case .xfs: return XfsFilesystem()
        }
    }
}

/// ext4 by rootfs's own Ext4Writer, straight from the source (a directory or a tar).
public struct NativeExt4Filesystem: FilesystemWriter {
    public var readsDirectory: Bool { false }

    public func write(into target: FilesystemTarget, disk: DiskImageWriter) async throws -> FilesystemWritten {
        let writer = Ext4Writer(label: disk.label, uuid: Ext4Writer.uuidBytes(target.uuid), epoch: disk.epoch,
                                freeSpaceMiB: disk.freeSpaceMiB)
        let plan = try writer.plan(source: target.source)
        try target.size(filesystemBytes: plan.filesystemBytes)
        try writer.write(plan: plan, source: target.source, fd: target.fd, offset: target.offset, name: target.output)
        return FilesystemWritten(filesystemBytes: plan.filesystemBytes, inputBytes: plan.dataBytes)
    }
}

/// ext4 by `mke2fs -d` from a directory, then fixed up (times from the epoch;
/// owners, modes and devices from a tar an ordinary user extracted).
public struct Mke2fsFilesystem: FilesystemWriter {
    public var readsDirectory: Bool { true }

    public func write(into target: FilesystemTarget, disk: DiskImageWriter) async throws -> FilesystemWritten {
        let sizing = try disk.sizing(tree: target.directory)
        try target.size(filesystemBytes: sizing.filesystemBytes)
        let output = target.output
        do {
            try await disk.runner.capture(disk.mke2fsCommand(tree: target.directory, image: target.image, sizing: sizing,
                                                             uuid: target.uuid, offset: target.offset))
        } catch let failure as ToolFailure {
            throw RootfsError("mke2fs could not write the file system of \(output) (\(failure.status))",
                              hint: failure.outputTail.contains { $0.contains("No space") || $0.contains("Could not allocate") }
                                ? "the tree did not fit in the computed size, or the disk holding \(FS.parent(output)) is full; free space there or add room with --free-space MB" : nil,
                              details: failure.outputTail)
        }
        // Times from the epoch (mke2fs copies atime/ctime from the temporary tree) and,
        // when an ordinary user extracted a tar, owners, modes and devices from the tar.
        let fixup = Ext4Fixup(epoch: disk.epoch, ownership: disk.ownershipFromSource(target.source))
        try await fixup.apply(source: target.source, image: target.image, offset: target.offset,
                              materializedDevices: !fixup.ownership, scratch: output)
        return FilesystemWritten(filesystemBytes: sizing.filesystemBytes, inputBytes: sizing.dataBytes)
    }
}

/// erofs by mkfs.erofs into a side file, copied into the partition (holes kept).
public struct ErofsFilesystem: FilesystemWriter {
    public var readsDirectory: Bool { true }

    public func write(into target: FilesystemTarget, disk: DiskImageWriter) async throws -> FilesystemWritten {
        let fsFile = FS.siblingTemporaryPath(for: target.output) + ".erofs"
        defer { unlink(fsFile) }
        try await FilesystemImageWriter(kind: .erofs, epoch: disk.epoch, uuid: target.uuid, label: disk.label, runner: disk.runner,
                                        erofsCompression: disk.erofsCompression)
            .run(directory: target.directory, output: fsFile)
        // Not root, from an archive: owners, modes and devices from the archive (see ErofsOwnership).
        if disk.ownershipFromSource(target.source) { try ErofsOwnership.apply(source: target.source, image: fsFile) }
        let size = FS.fileSize(fsFile)
        let filesystemBytes = roundUp(size, 1 << 20)
        try target.size(filesystemBytes: filesystemBytes)
        try FS.copyFile(fsFile, into: target.fd, at: target.offset)
        disk.note?("erofs \(disk.erofsCompression.rawValue), 4096-byte blocks: \(formatBytes(size))"
                   + (Self.ext4Comparison(tree: target.directory, disk: disk).map { "; \($0)" } ?? ""))
        return FilesystemWritten(filesystemBytes: filesystemBytes, inputBytes: size)
    }

    /// "ext4 of the same tree: N": what the default file system would take, from the native
    /// writer's plan of the directory already extracted (a walk of its metadata, nothing written).
    static func ext4Comparison(tree: String, disk: DiskImageWriter) -> String? {
        let writer = Ext4Writer(label: disk.label, uuid: Ext4Writer.uuidBytes(disk.filesystemUUID()), epoch: disk.epoch,
                                freeSpaceMiB: disk.freeSpaceMiB)
        guard let plan = try? writer.plan(source: .directory(tree)) else { return nil }
        return "ext4 of the same tree: \(formatBytes(plan.filesystemBytes))"
    }
}
