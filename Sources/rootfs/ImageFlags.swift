import ArgumentParser
import Foundation
import RootfsKit

/// The options of the format writers and of composition, shared by build, image and initrd.
struct ComposeFlags: ParsableArguments {
    @Option(name: .customLong("overlay"), help: ArgumentHelp(
        "Lay this directory or tar archive over the tree (repeatable, applied in order).", valueName: "DIR|TAR"))
    var overlays: [String] = []
    @Option(name: .customLong("file"), help: ArgumentHelp(
        "Copy a host file (or directory) to a guest path (repeatable).", valueName: "GUEST_PATH=HOST_PATH"))
    var files: [String] = []

    /// Overlays and files, in the order given on the command line per kind (overlays first).
    func specs() throws -> [OverlaySpec] {
        for o in overlays where !FS.exists(o) {
            throw RootfsError("--overlay \(o) does not exist", hint: "give a directory or a tar archive")
        }
        return overlays.map { OverlaySpec.overlay(FS.absolute($0)) } + (try files.map(OverlaySpec.parseFile))
    }
}

struct ImageFlags: ParsableArguments {
    static let maxFreeSpaceMiB = 16 << 20
    @Option(name: .customLong("free-space"), help: ArgumentHelp("Free space in the file system of disk images.", valueName: "MB"))
    var freeSpace: Int = 64
    @Option(name: .customLong("partition-table"), help: "Partition table of raw/qcow2/vhd/vmdk images: mbr or gpt.")
    var partitionTable: PartitionTable = .mbr
    @Flag(name: .customLong("no-partition-table"), help: "Write a bare file system image (no partition table).")
    var noPartitionTable = false
    @Option(name: .customLong("fs"), help: ArgumentHelp(
        "File system of disk images: ext4, erofs (read-only, compressed as --erofs-compression says) or xfs (mkfs.xfs from a prototype file: no root; names with white space or control bytes are refused; not reproducible).",
        valueName: "ext4|erofs|xfs"))
    var filesystem: FilesystemType = .ext4
    @Option(name: .customLong("erofs-compression"), help: ArgumentHelp(
        "Compression of erofs images and partitions: lz4hc (Kata's: mkfs.erofs -zlz4hc -Enoinline_data), lz4 or none.",
        valueName: "lz4hc|lz4|none"))
    var erofsCompression: String = ErofsCompression.lz4hc.rawValue
    @Option(name: .customLong("block-size"), help: ArgumentHelp(
        "Block size of the disk image's file system (Kata's BLOCK_SIZE): ext4 and xfs 1024, 2048 or 4096 (ext4 below 4096 is written by mke2fs); erofs 4096 only.",
        valueName: "BYTES"))
    var blockSize: Int?
    @Option(name: .customLong("ext4-writer"), help: "What writes ext4 file systems: native (rootfs's own writer: fast, reproducible, from a tar without root) or mke2fs (mke2fs -d).")
    var ext4Writer: Ext4WriterKind = .native
    @Flag(help: "Prepend Kata's 2 MiB NVDIMM/DAX header to the disk image (MBR only).")
    var dax = false
    @Flag(name: .customLong("vhdx-fixed"), help: "Write a fixed VHDX (every block stored) instead of a dynamic one (vhdx only).")
    var vhdxFixed = false
    @Option(help: ArgumentHelp("Kernel for kernel+initrd and iso-bios (default: the tree's /boot/vmlinuz*).", valueName: "FILE"))
    var kernel: String?
    @Option(help: "Kernel command line for kernel+initrd and iso-bios.")
    var cmdline: String = "console=ttyS0"

    func validate() throws {
        guard freeSpace >= 0 else { throw ValidationError("--free-space must be 0 or more") }
        // 16 TiB: ext4's limit with 4 KiB blocks, and far from any overflow of the sizes computed from it.
        guard freeSpace <= Self.maxFreeSpaceMiB else {
            throw ValidationError("--free-space \(freeSpace) MiB is more than an ext4 image holds (at most \(Self.maxFreeSpaceMiB) MiB, 16 TiB)")
        }
        _ = try ErofsCompression.parse(erofsCompression)
        if let blockSize, ![1024, 2048, 4096].contains(blockSize) {
            throw RootfsError("--block-size \(blockSize) is not a block size rootfs writes",
                              hint: "give 1024, 2048 or 4096 (ext4, xfs), or 4096 (erofs)")
        }
        if noPartitionTable && partitionTable == .gpt {
            throw ValidationError("--no-partition-table and --partition-table gpt contradict each other")
        }
    }

    func options(epoch: Int?, compression: Compression) -> ImageOptions {
        var o = ImageOptions()
        o.freeSpaceMiB = freeSpace
        o.partitionTable = noPartitionTable ? .none : partitionTable
        o.filesystem = filesystem
        o.dax = dax
        o.vhdxFixed = vhdxFixed
        o.ext4Writer = ext4Writer
        o.erofsCompression = (try? ErofsCompression.parse(erofsCompression)) ?? .lz4hc  // checked in validate()
        o.blockSize = blockSize
        o.kernel = kernel.map(FS.absolute)
        o.cmdline = cmdline
        o.epoch = epoch
        o.compression = compression
        return o
    }
}

extension PartitionTable: ExpressibleByArgument {}
extension FilesystemType: ExpressibleByArgument {}
extension Ext4WriterKind: ExpressibleByArgument {}
extension OutputFormat: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(OutputFormat.parse(argument)) }
    public static var allValueStrings: [String] { allCases.map(\.rawValue) }
}

extension OutputFormat {
    init(_ other: OutputFormat) { self = other }
}
