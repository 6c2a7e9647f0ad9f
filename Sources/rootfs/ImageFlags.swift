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
    /// An overlay may be an image (`oci:DIR`, `docker-archive:FILE`, or `docker://NAME` and
    /// `podman://NAME`, which `exports` saves from the engine first).
    func specs(exports: EngineImageExports) async throws -> [OverlaySpec] {
        var specs: [OverlaySpec] = []
        for o in overlays {
            let resolved = try await exports.resolve(o, option: "--overlay")
            if try ImageReference.parse(resolved, option: "--overlay") != nil {
                specs.append(.overlay(resolved))
                continue
            }
            guard FS.exists(o) else {
                throw RootfsError("--overlay \(o) does not exist",
                                  hint: "give a directory, a tar archive, or an image: \(ImageReference.transportList)")
            }
            specs.append(.overlay(FS.absolute(o)))
        }
        return specs + (try Self.rawBytes(of: files, option: "--file").map(OverlaySpec.parseFile(bytes:)))
    }

    /// The values of `option` as the bytes the user gave. CommandLine.arguments (what
    /// ArgumentParser parsed) has invalid UTF-8 repaired into U+FFFD, so the raw argv is
    /// read again (`--file V` and `--file=V`) and each parsed value is matched, in order,
    /// with the raw value whose repaired spelling it is; a value that is not on the
    /// command line (a config file's) keeps its own bytes.
    static func rawBytes(of values: [String], option: String) -> [[UInt8]] {
        var raw: [[UInt8]] = []
        let argc = Int(CommandLine.argc)
        var i = 1
        while i < argc {
            guard let pointer = CommandLine.unsafeArgv[i] else { break }
            let argument = Array(UnsafeBufferPointer(start: UnsafeRawPointer(pointer).assumingMemoryBound(to: UInt8.self), count: strlen(pointer)))
            if argument == Array("--".utf8) { break }
            if argument == Array(option.utf8), i + 1 < argc, let next = CommandLine.unsafeArgv[i + 1] {
                raw.append(Array(UnsafeBufferPointer(start: UnsafeRawPointer(next).assumingMemoryBound(to: UInt8.self), count: strlen(next))))
                i += 2
                continue
            }
            let prefix = Array((option + "=").utf8)
            if argument.starts(with: prefix) { raw.append(Array(argument[prefix.count...])) }
            i += 1
        }
        return values.map { value in
            if let at = raw.firstIndex(where: { String(decoding: $0, as: UTF8.self) == value }) {
                return raw.remove(at: at)
            }
            return Array(value.utf8)
        }
    }
}

struct ImageFlags: ParsableArguments {
    static let maxFreeSpaceMiB = 16 << 20
    @Option(name: .customLong("free-space"), help: ArgumentHelp("Free space in the file system of disk images.", valueName: "MB"))
    var freeSpace: Int = 64
    @Option(name: .customLong("partition-table"), help: ArgumentHelp(
        "Partition table of raw/qcow2/vhd/vhdx/vmdk images (none: a bare file system, as --no-partition-table).",
        valueName: PartitionTable.valueNames))
    var partitionTable: PartitionTable = .mbr
    @Flag(name: .customLong("no-partition-table"), help: "Write a bare file system image (no partition table).")
    var noPartitionTable = false
    @Option(name: .customLong("fs"), help: ArgumentHelp(
        "File system of disk images: ext4, erofs (read-only, compressed as --erofs-compression says) or xfs (mkfs.xfs from a prototype file: no root; names with white space or control bytes are refused; not reproducible).",
        valueName: FilesystemType.valueNames))
    var filesystem: FilesystemType = .ext4
    @Option(name: .customLong("erofs-compression"), help: ArgumentHelp(
        "Compression of erofs images and partitions (lz4hc is Kata's: mkfs.erofs -zlz4hc -Enoinline_data).",
        valueName: ErofsCompression.valueNames))
    var erofsCompression: ErofsCompression = .lz4hc
    @Option(name: .customLong("block-size"), help: ArgumentHelp(
        "Block size of the disk image's file system (Kata's BLOCK_SIZE): ext4 and xfs 1024, 2048 or 4096 (ext4 below 4096 is written by mke2fs); erofs 4096 only.",
        valueName: "BYTES"))
    var blockSize: Int?
    @Option(name: .customLong("ext4-writer"), help: ArgumentHelp("What writes ext4 file systems: native is rootfs's own writer (fast, reproducible, from a tar without root), mke2fs is mke2fs -d.", valueName: Ext4WriterKind.valueNames))
    var ext4Writer: Ext4WriterKind = .native
    @Flag(help: "Prepend Kata's 2 MiB NVDIMM/DAX header to the disk image (MBR only; on by default for Kata guests, as Kata's SKIP_DAX_HEADER=no).")
    var dax = false
    @Flag(name: .customLong("skip-dax-header"), help: "No DAX header, also for Kata guests (Kata's SKIP_DAX_HEADER=yes, also read from the environment): a virtio-blk-only image.")
    var skipDaxHeader = false
    @Option(name: .customLong("align"), help: ArgumentHelp("Round disk images up to a multiple of this many MiB (Kata's IMAGE_SIZE_ALIGNMENT_MB, also read from the environment; 128 for Kata guests, else 1).", valueName: "MiB"))
    var align: Int?
    @Flag(name: .customLong("vhdx-fixed"), help: "Write a fixed VHDX (every block stored) instead of a dynamic one (vhdx only).")
    var vhdxFixed = false
    @Flag(help: "dm-verity: the hash tree of the file system as partition 2 (sha256, 4 KiB blocks, no superblock, as Kata's MEASURED_ROOTFS=yes), and Kata's root_hash_<variant>.txt next to the image (raw and qcow2 only).")
    var verity = false
    @Option(help: ArgumentHelp("The variant in the root-hash file's name, root_hash_<variant>.txt, as Kata's BUILD_VARIANT (default: BUILD_VARIANT; none gives Kata's root_hash_.txt).", valueName: "NAME"))
    var variant: String?
    @Option(help: ArgumentHelp("Kernel for kernel+initrd, iso-bios, the EFI formats (uki, iso-efi, iso-efi-initrd, iso-hybrid, raw-efi, qcow2-efi) and LinuxKit's bundles (default: the tree's /boot/vmlinuz*).", valueName: "FILE"))
    var kernel: String?
    @Option(help: "Kernel command line for kernel+initrd, iso-bios, the EFI formats (the UKI's .cmdline) and LinuxKit's bundles.")
    var cmdline: String = "console=ttyS0"

    func validate() throws {
        guard freeSpace >= 0 else { throw ValidationError("--free-space must be 0 or more") }
        // 16 TiB: ext4's limit with 4 KiB blocks, and far from any overflow of the sizes computed from it.
        guard freeSpace <= Self.maxFreeSpaceMiB else {
            throw ValidationError("--free-space \(freeSpace) MiB is more than an ext4 image holds (at most \(Self.maxFreeSpaceMiB) MiB, 16 TiB)")
        }
        if let align, align < 1 || align > DiskImageWriter.maxAlignmentMiB {
            throw ValidationError("--align \(align) is not an image size step: give a whole number of MiB from 1 to \(DiskImageWriter.maxAlignmentMiB) (Kata's default is 128)")
        }
        if dax && skipDaxHeader { throw ValidationError("--dax and --skip-dax-header contradict each other") }
        if let variant { try VerityDisk.validateVariant(variant, option: "--variant") }
        if let blockSize, ![1024, 2048, 4096].contains(blockSize) {
            throw RootfsError("--block-size \(blockSize) is not a block size rootfs writes",
                              hint: "give 1024, 2048 or 4096 (ext4, xfs), or 4096 (erofs)")
        }
        if noPartitionTable && partitionTable == .gpt {
            throw ValidationError("--no-partition-table and --partition-table gpt contradict each other")
        }
    }

    /// `--dax` (true), `--skip-dax-header` (false), neither (nil: the build's default).
    var daxHeader: Bool? { dax ? true : skipDaxHeader ? false : nil }

    /// The options; `--align`, else IMAGE_SIZE_ALIGNMENT_MB from `environment` when given (`rootfs image`).
    func options(epoch: Int?, compression: Compression, environment: [String: String]? = nil) throws -> ImageOptions {
        var o = ImageOptions()
        o.alignmentMiB = align
        if align == nil, let text = environment?["IMAGE_SIZE_ALIGNMENT_MB"], !text.isEmpty {
            o.alignmentMiB = try DiskImageWriter.alignmentMiB(parsing: text, from: "IMAGE_SIZE_ALIGNMENT_MB")
        }
        o.freeSpaceMiB = freeSpace
        o.partitionTable = noPartitionTable ? .none : partitionTable
        o.filesystem = filesystem
        o.dax = dax
        o.verity = verity
        o.variant = variant
        o.vhdxFixed = vhdxFixed
        o.ext4Writer = ext4Writer
        o.erofsCompression = erofsCompression
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
