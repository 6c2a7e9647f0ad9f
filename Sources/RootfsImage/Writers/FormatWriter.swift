import RootfsSupport
import Foundation

/// What every format writer is given besides the tree and the output path.
public struct FormatWriteContext: Sendable {
    public var options: ImageOptions
    public var runner: ProcessRunner
    /// Archive writers report their growth here (see `WriteProgress`).
    public var progress: WriteProgress?
    /// One line about what was written, for the user (a file system's UUID...).
    public var note: (@Sendable (String) -> Void)?

    public init(options: ImageOptions, runner: ProcessRunner = ProcessRunner(), progress: WriteProgress? = nil,
                note: (@Sendable (String) -> Void)? = nil) {
        self.options = options
        self.runner = runner
        self.progress = progress
        self.note = note
    }
}

/// Writes one output format from a tree source. A writer writes under a
/// temporary name and renames into place only when the output is complete.
public protocol FormatWriter: Sendable {
    func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput]
}

extension OutputFormat {
    /// The writer of this format. The switch is exhaustive, so a format cannot
    /// be added (and offered in `--help`) without a writer.
    public var writer: any FormatWriter {
        switch self {
        case .rootfs: return RootfsDirectoryWriter()
        case .tar: return TarFormatWriter(compression: .none)
        case .tarGz: return TarFormatWriter(compression: .gzip)
        case .tarZst: return TarFormatWriter(compression: .zstd)
        case .initrd: return InitrdFormatWriter()
        case .raw, .qcow2, .vhd, .vmdk, .vhdx, .dynamicVHD: return DiskFormatWriter(format: self)
        case .oci: return OCIFormatWriter(layout: .oci)
        case .dockerArchive: return OCIFormatWriter(layout: .dockerArchive)
        case .containerDisk: return ContainerDiskFormatWriter()
        case .erofs: return FilesystemImageFormatWriter(kind: .erofs)
        case .squashfs: return FilesystemImageFormatWriter(kind: .squashfs)
        case .kernelInitrd: return KernelBundleFormatWriter()
        case .isoBios: return ISOFormatWriter()
        case .uki: return UKIFormatWriter()
        case .isoEFI, .isoEFIInitrd, .isoHybrid: return EFIISOFormatWriter(format: self)
        case .rawEFI, .qcow2EFI: return EFIDiskFormatWriter(format: self)
        case .kernelSquashfs: return KernelFilesystemBundleWriter(kind: .squashfs)
        case .kernelErofs: return KernelFilesystemBundleWriter(kind: .erofs)
        case .tarKernelInitrd: return KernelInitrdTarWriter()
        }
    }
}

/// `rootfs`: the tree extracted into a new directory, refused over a non-empty one.
public struct RootfsDirectoryWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        try TreeExtractor(destination: work + "/tree").extract(source)
        if FS.exists(output) && !FS.isMissingOrEmptyDirectory(output) {
            throw RootfsError("\(output) exists and is not empty", hint: "remove it or choose another -o")
        }
        if FS.exists(output) { rmdir(output) }
        try FS.rename(work + "/tree", to: output)
        return [BuildOutput(kind: "rootfs", path: output, bytes: 0)]
    }
}

/// `tar`, `tar.gz`, `tar.zst`: a reproducible tar (see TarWriter).
public struct TarFormatWriter: FormatWriter {
    public var compression: Compression

    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let format: OutputFormat = compression == .none ? .tar : compression == .gzip ? .tarGz : .tarZst
        let archiver = TreeArchiver(format: .paxRestricted, compression: compression, level: nil,
                                    epoch: context.options.epoch, progress: context.progress)
        let stats = try archiver.write(source: source, to: output)
        context.progress?(stats)  // the final figures, for the summary line
        return [BuildOutput(kind: format.rawValue, path: output, bytes: stats.outputBytes)]
    }
}

/// `initrd`: a cpio with /init, compressed as `ImageOptions.compression` says.
public struct InitrdFormatWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        var writer = InitrdWriter(compression: context.options.compression, epoch: context.options.epoch)
        writer.progress = context.progress
        let stats = try writer.write(source: source, to: output)
        context.progress?(stats)  // the final figures, for the summary line
        return [BuildOutput(kind: "initrd", path: output, bytes: stats.outputBytes)]
    }
}

/// `raw`: the disk image of DiskImageWriter with every disk option (partition
/// table, file system, DAX, label, free space, ext4 writer); `qcow2`, `vhd`,
/// `vmdk`: that raw disk converted by qemu-img.
public struct DiskFormatWriter: FormatWriter {
    public var format: OutputFormat

    public static func diskWriter(_ options: ImageOptions, runner: ProcessRunner) -> DiskImageWriter {
        var w = DiskImageWriter(freeSpaceMiB: options.freeSpaceMiB, label: options.label, epoch: options.epoch)
        w.partitionTable = options.partitionTable
        w.filesystem = options.filesystem
        w.dax = options.dax
        w.alignmentMiB = options.alignmentMiB
        w.ext4Writer = options.ext4Writer
        w.verity = options.verity
        if let architecture = options.architecture { w.architecture = architecture }
        w.blockSize = options.blockSize ?? 4096
        w.erofsCompression = options.erofsCompression
        w.runner = runner
        return w
    }

    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        var disk = Self.diskWriter(context.options, runner: context.runner)
        disk.note = context.note
        let describe = { (uuid: String, bytes: Int64) in
            "\(disk.filesystem.rawValue) \(uuid), \(disk.partitionTable == .none ? "no partition table" : disk.partitionTable.rawValue.uppercased()), \(formatBytes(bytes))"
        }
        if format == .raw {
            let written = try await disk.writeDisk(source: source, to: output)
            context.note?(describe(written.uuid, written.stats.outputBytes))
            return [try Self.withVerity(BuildOutput(kind: "raw", path: output, bytes: written.stats.outputBytes), written, context: context)]
        }
        let raw = FS.siblingTemporaryPath(for: output) + ".raw"
        defer { unlink(raw) }
        let written = try await disk.writeDisk(source: source, to: raw)
        let (stats, uuid) = (written.stats, written.uuid)
        context.note?(describe(uuid, stats.outputBytes))
        let bytes: Int64
        switch format {
        case .vhdx:
            // Our own writer (MS-VHDX): reproducible GUIDs, no qemu-img needed.
            bytes = try VHDXWriter(kind: context.options.vhdxFixed ? .fixed : .dynamic, epoch: context.options.epoch)
                .write(rawDisk: raw, to: output).outputBytes
        case .dynamicVHD:
            bytes = try DynamicVHDWriter(epoch: context.options.epoch).write(rawDisk: raw, to: output).outputBytes
        default:
            bytes = try await QemuImgConverter(runner: context.runner, epoch: context.options.epoch)
                .convert(raw: raw, to: output, format: format, uuid: uuid)
        }
        return [try Self.withVerity(BuildOutput(kind: format.rawValue, path: output, bytes: bytes), written, context: context)]
    }

    /// A verity disk's root hash and salt on its record, and Kata's root-hash file next to it.
    static func withVerity(_ output: BuildOutput, _ written: DiskImageWriter.DiskWritten, context: FormatWriteContext) throws -> BuildOutput {
        guard let p = written.verity else { return output }
        var output = output
        let file = FS.parent(output.path) + "/" + VerityDisk.rootHashFileName(variant: context.options.variant)
        try VerityHashTree.writeKataParameters(p, to: file)
        output.verity = p
        output.rootHashFile = file
        context.note?("verity root hash \(p.rootHash), salt \(p.salt), \(p.dataBlocks) data blocks: \(file)")
        return output
    }
}

/// `erofs`, `squashfs`: a bare file system image made by mkfs.erofs / mksquashfs.
public struct FilesystemImageFormatWriter: FormatWriter {
    public var kind: FilesystemImageWriter.Kind
    /// kernel+squashfs, kernel+erofs: the tree's /boot left out.
    public var excludeBoot = false

    public init(kind: FilesystemImageWriter.Kind) { self.kind = kind }

    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let disk = DiskFormatWriter.diskWriter(context.options, runner: context.runner)
        // erofs gets a tar's owners back without root (ErofsOwnership); mksquashfs has no such fix-up.
        if kind == .squashfs { try DiskImageWriter.refuseLosingOwnership(source, format: "a squashfs image", disk.ownershipFromSource(source)) }
        let (root, cleanup) = try source.materialized(near: output)
        defer { cleanup() }
        let temporary = FS.siblingTemporaryPath(for: output)
        defer { unlink(temporary) }
        if kind == .erofs { try FilesystemType.erofs.requireBlockSize(context.options.blockSize ?? 4096) }
        var writer = FilesystemImageWriter(kind: kind, epoch: context.options.epoch, uuid: disk.filesystemUUID(),
                                           label: context.options.label, runner: context.runner,
                                           erofsCompression: context.options.erofsCompression)
        writer.excludeBoot = excludeBoot
        try await writer.run(directory: root, output: temporary)
        if kind == .erofs && disk.ownershipFromSource(source) { try ErofsOwnership.apply(source: source, image: temporary) }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
        if kind == .erofs {
            context.note?("erofs \(writer.erofsCompression.rawValue), 4096-byte blocks: \(formatBytes(FS.fileSize(output)))"
                          + (ErofsFilesystem.ext4Comparison(tree: root, disk: disk).map { "; \($0)" } ?? ""))
        }
        return [BuildOutput(kind: kind.rawValue, path: output, bytes: FS.fileSize(output))]
    }
}

/// `kernel+initrd`: see KernelBundleWriter.
public struct KernelBundleFormatWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        try await KernelBundleWriter(options: context.options).write(source: source, prefix: output)
    }
}

/// `iso-bios`: see ISOWriter.
public struct ISOFormatWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        try await ISOWriter(options: context.options, runner: context.runner).write(source: source, to: output)
    }
}

/// `oci`, `docker-archive`: the tree as a single-layer container image
/// (OCI/OCIImageWriter.swift), digests reproducible under SOURCE_DATE_EPOCH.
public struct OCIFormatWriter: FormatWriter {
    public var layout: OCIImageWriter.Layout

    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let writer = OCIImageWriter(layout: layout, compression: context.options.compression == .none ? .gzip : context.options.compression,
                                    epoch: context.options.epoch, version: RootfsVersion.version,
                                    reference: "rootfs:latest")
        let result = try writer.write(source: source, to: output)
        context.note?("\(layout.rawValue) image, manifest \(result.manifestDigest)")
        let bytes = layout == .oci ? FS.treeSize(output) : FS.fileSize(output)
        // A layout directory is known by its manifest's digest; a docker archive is a file, digested like any other.
        let digest = layout == .oci ? String(result.manifestDigest.dropFirst("sha256:".count)) : nil
        return [BuildOutput(kind: layout.rawValue, path: output, bytes: bytes, sha256: digest)]
    }
}

/// `containerdisk`: the qcow2 disk of the tree (every disk option applies) under
/// /disk/ in a single-layer OCI layout, as KubeVirt expects.
public struct ContainerDiskFormatWriter: FormatWriter {
    public func write(source: TreeSource, to output: String, context: FormatWriteContext) async throws -> [BuildOutput] {
        let disk = FS.siblingTemporaryPath(for: output) + ".qcow2"
        defer { unlink(disk) }
        _ = try await DiskFormatWriter(format: .qcow2).write(source: source, to: disk, context: context)
        let result = try ContainerDiskWriter(epoch: context.options.epoch, version: RootfsVersion.version).write(disk: disk, to: output)
        context.note?("containerdisk image, manifest \(result.manifestDigest)")
        return [BuildOutput(kind: "containerdisk", path: output, bytes: FS.treeSize(output),
                            sha256: String(result.manifestDigest.dropFirst("sha256:".count)))]
    }
}
