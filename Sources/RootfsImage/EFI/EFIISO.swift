import RootfsSupport
import Glibc

/// LinuxKit's iso-efi: an ISO 9660 image whose El Torito catalog has one EFI
/// (platform 0xEF) no-emulation entry, a FAT ESP (`FATImage`) holding the UKI as
/// \EFI\BOOT\BOOTX64.EFI. xorriso writes the ISO; SOURCE_DATE_EPOCH fixes its
/// time stamps and volume id, and the ESP itself is reproducible. Given iso-bios's
/// staged files, the same ISO boots with the BIOS too (the hybrid ISO: isolinux
/// first in the catalog, the EFI image as the alternative entry, MBR and GPT both).
public struct EFIISO: Sendable {
    /// The UKI that becomes \EFI\BOOT\BOOTX64.EFI; nil when `espFiles` bring the boot program
    /// (iso-efi-initrd: systemd-boot, its loader entry, the kernel and the initrd).
    public var uki: UnifiedKernelImage?
    public var epoch: Int?
    public var volumeLabel = "ROOTFS"
    public var runner = ProcessRunner()
    /// Files on the ESP (beside the UKI, when there is one).
    public var espFiles: [FATImage.File] = []

    public init(uki: UnifiedKernelImage?, epoch: Int?) {
        self.uki = uki
        self.epoch = epoch
    }

    /// iso-efi-initrd's ESP: systemd-boot as \EFI\BOOT\BOOTX64.EFI, a loader entry booting the kernel
    /// with the initrd beside it (systemd-boot hands it over through the kernel's initrd media
    /// device path) and `options` the command line; no menu (timeout 0).
    public static func bootLoaderFiles(bootLoader: String, kernel: String, initrd: String, commandLine: String) -> [FATImage.File] {
        [
            FATImage.File(path: ["EFI", "BOOT", "BOOTX64.EFI"], content: .file(bootLoader)),
            FATImage.File(path: ["loader", "loader.conf"], content: .bytes(Array("timeout 0\ndefault rootfs.conf\n".utf8))),
            FATImage.File(path: ["loader", "entries", "rootfs.conf"], content: .bytes(Array(
                "title rootfs\nlinux /boot/kernel\ninitrd /boot/initrd.img\noptions \(commandLine)\n".utf8))),
            FATImage.File(path: ["boot", "kernel"], content: .file(kernel)),
            FATImage.File(path: ["boot", "initrd.img"], content: .file(initrd)),
        ]
    }

    /// Where Debian's systemd-boot-efi package installs systemd-boot for x86-64.
    public static let systemdBoot = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

    /// The xorriso invocation: `efiboot.img` in `staging` becomes the EFI boot image;
    /// `bios`: isolinux (staged by ISOWriter) is the default entry, the EFI image the alternative.
    public static func command(staging: String, output: String, label: String, epoch: Int?, bios: Bool = false) -> ToolCommand {
        var env: [String: String] = [:]
        if let epoch { env["SOURCE_DATE_EPOCH"] = String(epoch) }
        var arguments = ["-as", "mkisofs", "-quiet", "-o", output, "-R", "-J", "-V", label]
        if bios {
            arguments += ["-isohybrid-mbr", ISOWriter.hybridMBR, "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
                          "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", "-eltorito-alt-boot"]
        }
        arguments += ["-e", "efiboot.img", "-no-emul-boot"]
        // The EFI image as a GPT partition too, so the hybrid also boots from a USB stick under UEFI.
        if bios { arguments.append("-isohybrid-gpt-basdat") }
        return ToolCommand("xorriso", arguments + [staging], environment: env)
    }

    /// Writes the ISO. `biosStaging`: a directory ISOWriter.stage filled (the hybrid ISO); the
    /// ESP is added to it.
    public func write(to output: String, biosStaging: String? = nil) async throws {
        guard ProcessRunner.which("xorriso") != nil else {
            throw RootfsError("xorriso is not installed; it writes the iso-efi format", hint: "apt-get install xorriso")
        }
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        defer { FS.remove(work) }
        let staging = biosStaging ?? work + "/iso"
        try FS.makeDirectories(staging)
        var files = espFiles
        if let uki {
            try uki.write(to: work + "/uki.efi")
            files.insert(FATImage.File(path: ["EFI", "BOOT", "BOOTX64.EFI"], content: .file(work + "/uki.efi")), at: 0)
        }
        var seed = SHA256()
        seed.update(Array("iso-efi:\(uki?.commandLine ?? "boot-loader"):\(epoch.map(String.init) ?? "none")".utf8))
        let esp = FATImage(files: files,
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
            try await runner.capture(Self.command(staging: staging, output: temporary, label: volumeLabel, epoch: epoch,
                                                  bios: biosStaging != nil))
        } catch let failure as ToolFailure {
            throw RootfsError("xorriso could not write \(output) (\(failure.status))", details: failure.outputTail)
        }
        try Task.checkCancellation()
        try FS.rename(temporary, to: output)
    }
}
