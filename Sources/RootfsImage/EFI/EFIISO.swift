import RootfsSupport
import Glibc

/// LinuxKit's iso-efi: an ISO 9660 image whose El Torito catalog has one EFI
/// (platform 0xEF) no-emulation entry, a FAT ESP (`FATImage`) holding the UKI as
/// \EFI\BOOT\BOOTX64.EFI. xorriso writes the ISO; SOURCE_DATE_EPOCH fixes its
/// time stamps and volume id, and the ESP itself is reproducible.
public struct EFIISO: Sendable {
    public var uki: UnifiedKernelImage
    public var epoch: Int?
    public var volumeLabel = "ROOTFS"
    public var runner = ProcessRunner()

    public init(uki: UnifiedKernelImage, epoch: Int?) {
        self.uki = uki
        self.epoch = epoch
    }

    /// The xorriso invocation: `efiboot.img` in `staging` becomes the EFI boot image.
    public static func command(staging: String, output: String, label: String, epoch: Int?) -> ToolCommand {
        var env: [String: String] = [:]
        if let epoch { env["SOURCE_DATE_EPOCH"] = String(epoch) }
        return ToolCommand("xorriso", [
            "-as", "mkisofs", "-quiet", "-o", output, "-R", "-J", "-V", label,
            "-e", "efiboot.img", "-no-emul-boot", staging,
        ], environment: env)
    }

    public func write(to output: String) async throws {
        guard ProcessRunner.which("xorriso") != nil else {
            throw RootfsError("xorriso is not installed; it writes the iso-efi format", hint: "apt-get install xorriso")
        }
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let staging = work + "/iso"
        try FS.makeDirectories(staging)
        try uki.write(to: work + "/uki.efi")
        var seed = SHA256()
        seed.update(Array("iso-efi:\(uki.commandLine):\(epoch.map(String.init) ?? "none")".utf8))
        let esp = FATImage(files: [FATImage.File(path: ["EFI", "BOOT", "BOOTX64.EFI"], content: .file(work + "/uki.efi"))],
                           label: "ESP", volumeID: FATImage.volumeID(seed: SHA256.hex(seed.finalize())), epoch: epoch, freeBytes: 0)
        try esp.write(to: staging + "/efiboot.img")
        if let epoch {
            for p in ["efiboot.img", ""] {
                var times = [timespec(tv_sec: epoch, tv_nsec: 0), timespec(tv_sec: epoch, tv_nsec: 0)]
                utimensat(AT_FDCWD, staging + "/" + p, &times, 0)
            }
        }
        let temporary = work + "/out.iso"
        do {
            try await runner.capture(Self.command(staging: staging, output: temporary, label: volumeLabel, epoch: epoch))
        } catch let failure as ToolFailure {
            throw RootfsError("xorriso could not write \(output) (\(failure.status))", details: failure.outputTail)
        }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
    }
}
