import RootfsSupport
import Glibc

/// A disk that UEFI firmware boots (LinuxKit's raw-efi): GPT, an EFI system
/// partition at 1 MiB holding a unified kernel image as \EFI\BOOT\BOOTX64.EFI
/// (the removable-media path firmware tries without any boot entry), then the
/// root partition (ext4 from Ext4Writer), typed as the Discoverable Partitions
/// Specification's x86-64 root. The UKI's command line has no root=: its
/// initrd (GPTRootInitrd, the stage-1 rootfs-agent) finds the root by that
/// type, as systemd-gpt-auto-generator does in a systemd initrd, and switches
/// to it. Everything derives from the ext4 UUID (itself from SOURCE_DATE_EPOCH
/// and the label), so two builds give the same bytes.
public struct EFIDisk: Sendable {
    /// The EFI system partition type (UEFI specification).
    public static let espType = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    /// "Root Partition (x86-64)" of the Discoverable Partitions Specification (systemd's
    /// SD_GPT_ROOT_X86_64; sgdisk's type code 8304).
    public static let rootX86_64Type = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
    static let alignment: Int64 = 1 << 20

    public var kernel: String
    /// The UKI's initrd: the stage-1 that finds the root by type (GPTRootInitrd).
    public var initrd: String?
    /// The kernel parameters (console=, the agent's); no root=, the initrd finds it.
    public var commandLine: String
    public var osRelease: [UInt8]
    public var stub = UnifiedKernelImage.defaultStub
    public var label = "rootfs"
    public var epoch: Int?
    public var freeSpaceMiB = 64

    public init(kernel: String, initrd: String? = nil, commandLine: String, osRelease: [UInt8], epoch: Int?) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.osRelease = osRelease
        self.epoch = epoch
    }

    public struct Written: Sendable {
        public var rootPartitionUUID: String
        public var commandLine: String
        public var espBytes: Int64
        public var rootBytes: Int64
        public var diskBytes: Int64
    }

    /// Writes the disk to a temporary name next to `output` and renames it at the end.
    @discardableResult
    public func write(source: TreeSource, to output: String) throws -> Written {
        let uuid = DiskImageWriter(label: label, epoch: epoch).filesystemUUID()
        let rootPartUUID = Self.derivedGUID("root-partition", uuid)
        let line = commandLine
        let temporary = FS.siblingTemporaryPath(for: output)
        let ukiFile = temporary + ".uki"
        var keep = false
        defer {
            unlink(ukiFile)
            if !keep { unlink(temporary) }
        }
        // Everything that can be refused (no stub, a kernel without EFI stub) before the disk exists.
        try UnifiedKernelImage(kernel: kernel, initrd: initrd, commandLine: line, osRelease: osRelease, stub: stub).write(to: ukiFile)
        let esp = FATImage(files: [FATImage.File(path: ["EFI", "BOOT", "BOOTX64.EFI"], content: .file(ukiFile))],
                           label: "ESP", volumeID: FATImage.volumeID(seed: uuid), epoch: epoch)
        let espPlan = try esp.plan()
        let espBytes = try alignUp(espPlan.bytes, Self.alignment, "the ESP size")
        let ext4 = Ext4Writer(label: label, uuid: Ext4Writer.uuidBytes(uuid), epoch: epoch, freeSpaceMiB: freeSpaceMiB)
        let ext4Plan = try ext4.plan(source: source)
        let rootOffset = Self.alignment + espBytes
        let rootBytes = ext4Plan.filesystemBytes
        // The backup GPT goes into the last MiB.
        let diskBytes = try Checked.add(try Checked.add(rootOffset, rootBytes, "the disk size"), Self.alignment, "the disk size")

        var fd = try OwnedFileDescriptor(path: temporary, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o644, name: output)
        guard ftruncate(fd.raw, off_t(diskBytes)) == 0 else {
            throw RootfsError("cannot size \(output): \(FS.errnoText())", hint: "is the disk holding \(FS.parent(output)) full?")
        }
        try esp.write(espPlan, to: fd, at: Self.alignment, hiddenSectors: UInt32(Self.alignment / 512))
        try ext4.write(plan: ext4Plan, source: source, fd: fd.raw, offset: rootOffset, name: output)
        var gpt = GPT(diskSectors: UInt64(diskBytes / 512), firstSector: UInt64(Self.alignment / 512),
                      lastSector: UInt64((Self.alignment + espBytes) / 512) - 1,
                      diskGUID: Self.derivedGUID("disk", uuid), partitionGUID: Self.derivedGUID("esp", uuid),
                      partitionName: "ESP")
        gpt.typeGUID = Self.espType
        gpt.morePartitions = [GPT.Partition(typeGUID: Self.rootX86_64Type, partitionGUID: rootPartUUID,
                                            firstSector: UInt64(rootOffset / 512),
                                            lastSector: UInt64((rootOffset + rootBytes) / 512) - 1, name: "root-x86-64")]
        for (lba, bytes) in gpt.sectors { try fd.writeAll(bytes, at: Int64(lba) * 512) }
        try Task.checkCancellation()
        try fd.close()
        try FS.rename(temporary, to: output)
        keep = true
        return Written(rootPartitionUUID: rootPartUUID, commandLine: line, espBytes: espBytes, rootBytes: rootBytes, diskBytes: diskBytes)
    }

    /// A version-4-shaped GUID from a digest of the purpose and the file system UUID.
    static func derivedGUID(_ what: String, _ uuid: String) -> String {
        var hasher = SHA256()
        hasher.update(Array("rootfs-efi-gpt:\(what):\(uuid)".utf8))
        var bytes = Array(hasher.finalize().prefix(16))
        bytes[6] = (bytes[6] & 0x0f) | 0x40
        bytes[8] = (bytes[8] & 0x3f) | 0x80
        let c = Array(SHA256.hex(bytes)).map(String.init).joined().uppercased()
        let a = Array(c)
        return String(a[0..<8]) + "-" + String(a[8..<12]) + "-" + String(a[12..<16]) + "-" + String(a[16..<20]) + "-" + String(a[20..<32])
    }
}
