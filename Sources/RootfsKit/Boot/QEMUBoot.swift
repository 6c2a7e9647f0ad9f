import AgentProtocol
import Foundation
import Synchronization

/// The virtualization back end QEMU uses.
public enum Accelerator: String, Sendable, CaseIterable {
    /// KVM when it works here, TCG otherwise.
    case auto
    /// Hardware virtualization (needs a working /dev/kvm).
    case kvm
    /// QEMU's software emulation: slow, but works everywhere.
    case tcg
}

/// Which firmware QEMU starts: SeaBIOS (QEMU's default) or OVMF (UEFI).
public enum Firmware: String, Sendable, CaseIterable {
    /// OVMF for what only UEFI boots (a UKI, an EFI ISO, an ESP disk), SeaBIOS otherwise.
    case auto
    case bios
    case efi
}

/// What to boot and how.
public struct BootOptions: Sendable {
    /// An initrd, an ISO or a disk image (raw, VHD, qcow2, vmdk).
    public var image: String
    /// The kernel; nil for an ISO (its own) and for a kernel+initrd bundle
    /// (`NAME-kernel` next to `NAME-initrd.img`).
    public var kernel: String?
    /// An initramfs booted with a disk image (e.g. one that loads the root
    /// file system's module before mounting `root=`).
    public var initrd: String?
    /// Kernel parameters that come with the image (a bundle's `NAME-cmdline`),
    /// put before rootfs's own so that those win.
    public var imageCommandLine: String = ""
    /// The command the agent runs; empty for none (interactive: a shell).
    public var command: [String] = []
    /// Seconds until the guest must have finished.
    public var timeout: Double = 120
    public var memoryMB: Int = 512
    /// Extra kernel parameters, appended last (so they win).
    public var append: String = ""
    /// Connect the terminal to the guest's console instead of capturing output.
    public var interactive = false
    public var accelerator: Accelerator = .auto
    public var qemu = "qemu-system-x86_64"
    /// The guest's architecture (`--arch`, else the ELF machine of an initrd's init); nil: the host's.
    public var architecture: Architecture?
    /// The guest's hostname (the agent's default when nil).
    public var hostname: String?
    /// TERM for an interactive command.
    public var term: String?
    /// The user QEMU drops to once its files are open (`-runas`); nil: stay as we are.
    /// As root it is `nobody` by default: a guest escaping QEMU must not be root on the host.
    public var unprivilegedUser: String? = getuid() == 0 ? "nobody" : nil
    /// How long a KVM guest may stay silent before KVM counts as broken.
    public var kvmProbeSeconds: Double = 10
    /// `--kata`: Kata's kernel parameters and devices (KataBoot.swift).
    public var kata: KataBoot?
    /// `--firmware`: a hybrid ISO boots with the BIOS when asked, everything else with OVMF when asked.
    public var firmware: Firmware = .auto
    /// OVMF as Debian's ovmf package installs it (`-bios`).
    public var ovmf = "/usr/share/ovmf/OVMF.fd"
    /// A `--verity` disk: the root is its dm-verity mapping (VerityBoot.swift).
    public var verity: VerityBoot?

    /// `--cpus`: QEMU's -smp; nil: QEMU's default (one).
    public var cpus: Int?
    /// `--disk`: extra disks (raw or qcow2 files), each on an NVMe controller of its own,
    /// after the root disk. Written to, not snapshots: they are the user's scratch disks.
    public var extraDisks: [ExtraDisk] = []
    /// `--net user`: QEMU's user-mode network on a virtio-net card; the agent configures
    /// the guest side (AgentProtocol.networkParameter). nil: no network card at all.
    public var network: GuestNetwork?
    /// `--share`: host directories the guest mounts (virtiofs, served by virtiofsd).
    public var shares: [GuestShare] = []
    /// `--qemu-arg`: passed verbatim after rootfs's own arguments (the user's own command line).
    public var extraQEMUArguments: [String] = []
    /// Called with the guest console's bytes as QEMU writes them (`--console`, `-v`, `--log-file`).
    public var onConsole: (@Sendable ([UInt8]) -> Void)?

    public init(image: String, kernel: String?, command: [String] = []) {
        self.image = image
        self.kernel = kernel
        self.command = command
    }

    /// The QEMU machine for the guest's architecture (an unbootable one fails in `QEMUBoot.run`).
    public var machine: GuestMachine {
        (try? GuestMachine.forArchitecture(architecture ?? Architecture.host ?? .x86_64))
            ?? (try! GuestMachine.forArchitecture(.x86_64))
    }

    /// The emulator: `qemu` for x86_64 guests (it can be overridden), the architecture's otherwise.
    public var qemuExecutable: String { machine.architecture == .x86_64 ? qemu : machine.qemu }
}

/// How a boot ended when the agent reported a status.
public struct BootResult: Sendable, Equatable {
    public var status: AgentProtocol.Status
    /// Seconds from starting QEMU to the agent's ready line.
    public var readySeconds: Double
    /// No command was given: the guest was stopped once ready.
    public var stoppedWhenReady = false
    /// The accelerator that ran the guest (`.kvm` or `.tcg`).
    public var accelerator: Accelerator

    /// What `rootfs boot` exits with: the command's status (128+N for signal N).
    public var exitStatus: Int32 { status.shellStatus }
}

/// Boots an initrd or disk image in QEMU with the rootfs agent as init and
/// runs one command in it. See docs/AGENT.md for the protocol.
public struct QEMUBoot: Sendable {
    public var options: BootOptions
    public var runner = ProcessRunner()
    /// The initrd QEMU gets when it is not the image itself (the image plus --net's modules).
    var initrdImage: String?
    /// Modules the agent loads for our devices (virtio-net, virtiofs), added to the initrd.
    var guestModules: [GuestModule] = []
    /// The vhost-user sockets of --share's virtiofsd, one per share (set by `attempt`).
    var shareSockets: [String] = []
    /// The kernel's command line limit on x86 (COMMAND_LINE_SIZE), with some room.
    public static let maxCommandLine = 2000
    /// How many console lines an error shows.
    public static let tailLines = 20
    /// `rootfs boot`'s exit status when the guest ran out of --timeout (timeout(1)'s).
    public static let timeoutExitStatus: Int32 = 124
    /// `rootfs boot`'s exit status when rootfs or QEMU failed (`docker run`'s): a guest
    /// command's own status, whatever it is, passes through unchanged.
    public static let failureExitStatus: Int32 = 125

    public init(options: BootOptions) {
        self.options = options
    }

    // MARK: Arguments

    /// The guest kernel's command line.
    public func kernelCommandLine(kind: BootImageKind) throws -> String {
        if kind.bootsItself {
            throw RootfsError("\(kind == .iso || kind.disk == nil ? "an ISO" : "a disk booted from its EFI system partition") boots with the kernel command line it was written with",
                              hint: "boot it without a command (rootfs boot waits for the agent to be ready), or boot the kernel+initrd or uki format")
        }
        var parameters: [String] = []
        let fromImage = options.imageCommandLine.trimmingCharacters(in: .whitespaces)
        if !fromImage.isEmpty { parameters.append(fromImage) }
        // no_timer_check: a guest slowed down by TCG on a busy host can fail the IO-APIC
        // timer check and panic ("IO-APIC + timer doesn't work"); a virtual timer needs no check.
        let machine = options.machine
        parameters += ["console=\(machine.console)", "panic=-1", "no_timer_check"]
        if let verity = options.verity, let disk = kind.disk {
            // The root is /dev/dm-0, read-only: Kata's dm-mod.create, or the stage-1 initrd's mapping from it.
            let fs = disk.filesystem == .unknown ? "ext4" : disk.filesystem.rawValue
            if let kata = options.kata {
                parameters += kata.kernelParameters + (try verity.kernelParameters(kata: true))
                    + kata.rootParameters(filesystem: fs).filter { !$0.hasPrefix("root=") }
            } else {
                parameters += (try verity.kernelParameters(kata: false)) + ["rootfstype=\(fs)", "ro"]
            }
        } else if let kata = options.kata, let disk = kind.disk {
            parameters += kata.kernelParameters + kata.rootParameters(filesystem: disk.filesystem == .unknown ? "ext4" : disk.filesystem.rawValue)
        } else if let disk = kind.disk {
            parameters.append("root=\(machine.rootDevice(of: disk))")
            if disk.filesystem != .unknown { parameters.append("rootfstype=\(disk.filesystem.rawValue)") }
            parameters.append(disk.readOnly ? "ro" : "rw")
        }
        var command = options.command
        if options.interactive {
            parameters += ["quiet", "\(AgentProtocol.ttyParameter)=\(machine.console)", "\(AgentProtocol.statusParameter)=\(machine.outputPort)"]
            if let term = options.term, !term.isEmpty, term.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) {
                parameters.append("\(AgentProtocol.termParameter)=\(term)")
            }
            if command.isEmpty { command = ["/bin/sh"] }
        } else {
            // ttyS1: the command's output; ttyS2: the agent's status lines, on a device of
            // their own (the console is shared with the kernel and every guest daemon).
            let (output, status) = usesEFI(kind) ? ("ttyS2", "ttyS3") : (machine.outputPort, machine.statusPort)
            parameters += ["\(AgentProtocol.outputParameter)=\(output)", "\(AgentProtocol.statusParameter)=\(status)"]
        }
        if let hostname = options.hostname {
            parameters.append("\(AgentProtocol.hostnameParameter)=\(hostname)")
        }
        if !guestModules.isEmpty {
            parameters.append("\(AgentProtocol.modulesParameter)=\(guestModules.map(\.name).joined(separator: ","))")
        }
        if let network = options.network {
            parameters.append("\(AgentProtocol.networkParameter)=\(network.agentValue)")
        }
        if !options.shares.isEmpty {
            // Tag and guest path pairs, encoded as the command is: any path survives the command line.
            let pairs = options.shares.enumerated().flatMap { [GuestShare.tag($0.offset), $0.element.guestPath] }
            guard let encoded = AgentProtocol.encodeCommand(pairs) else { throw RootfsError("a --share guest path contains a NUL byte") }
            parameters.append("\(AgentProtocol.sharesParameter)=\(encoded)")
        }
        if !command.isEmpty {
            guard let encoded = AgentProtocol.encodeCommand(command) else {
                throw RootfsError("the command contains a NUL byte")
            }
            parameters.append("\(AgentProtocol.commandParameter)=\(encoded)")
        }
        let extra = options.append.trimmingCharacters(in: .whitespaces)
        if !extra.isEmpty { parameters.append(extra) }
        let line = parameters.joined(separator: " ")
        if line.utf8.count > Self.maxCommandLine {
            throw RootfsError("the command is too long for the kernel command line (\(line.utf8.count) bytes, at most \(Self.maxCommandLine))",
                              hint: "put a script into the image and run that instead")
        }
        return line
    }

    /// The QEMU invocation. `consoleLog` receives ttyS0 (the console) in
    /// batch runs; `statusLog` receives ttyS1 (the status copy) in interactive ones.
    public func qemuCommand(kind: BootImageKind, accelerator: Accelerator,
                            consoleLog: String, statusLog: String) throws -> ToolCommand {
        var arguments: [String] = []
        // QEMU runs as root on an image from anywhere: seccomp (no exec, no obsolete or
        // privilege-raising system calls) and, as root, an unprivileged user once the
        // image, kernel and devices are open (7.2 has -runas; -run-with comes in 9.0).
        // The filter is installed before -runas drops root, so set*uid stays allowed then
        // (root gone, nobody cannot raise itself back); without -runas it is denied too.
        if let user = options.unprivilegedUser {
            arguments += ["-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny", "-runas", user]
        } else {
            arguments += ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
        }
        let machine = options.machine
        switch accelerator {
        case .kvm: arguments += ["-accel", "kvm"]
        case .tcg, .auto: arguments += ["-accel", "tcg"]
        }
        arguments += machine.machineArguments(kvm: accelerator == .kvm)
        let nvdimm = options.kata?.root == .pmem && kind.disk != nil
        let memory = nvdimm ? try KataBoot.nvdimmMemory(memoryMB: options.memoryMB, imageBytes: FS.fileSize(options.image)) : String(options.memoryMB)
        arguments += ["-m", memory, "-nographic", "-no-reboot", "-nic", "none"]
        // OVMF as a ROM (-bios): no variable store is written, nothing outlives the boot.
        if usesEFI(kind) { arguments += ["-bios", options.ovmf] }
        switch kind {
        case .iso, .efiISO:
            // The firmware boots the CD: isolinux (SeaBIOS) or the El Torito EFI image (OVMF) loads the ISO's own kernel.
            arguments += ["-drive", "if=ide,index=2,media=cdrom,format=raw,\(Self.fileOption(options.image))", "-boot", "d"]
        case .initrd:
            arguments += ["-kernel", try kernelPath(), "-initrd", initrdImage ?? options.image]
        case .uki:
            // OVMF loads the UKI as an EFI program; with Secure Boot off systemd's stub takes
            // the command line it is given (-append) instead of its .cmdline.
            arguments += ["-kernel", options.image]
        case .disk(let disk):
            // An ESP disk: OVMF boots \EFI\BOOT\BOOTX64.EFI from it, no -kernel.
            if !disk.bootsFromESP { arguments += ["-kernel", try kernelPath()] }
            if let initrd = options.initrd { arguments += ["-initrd", initrd] }
            // -snapshot: writes go to a temporary overlay, the image stays as it is.
            // The file protocol forced and commas doubled: no part of the path is an option or a
            // protocol (`disk.img,snapshot=off`, `json:{...}`, `nbd:...`); no backing file.
            let drive = "if=none,id=d0,format=\(disk.container.rawValue),\(Self.fileOption(options.image))"
                + (disk.container == .qcow2 ? ",backing=" : "")
            if nvdimm {
                let bytes = FS.fileSize(options.image)
                try KataBoot.requireNVDIMMImage(options.image, container: disk.container.rawValue, bytes: bytes, dax: options.kata?.dax ?? false)
                arguments += KataBoot.nvdimmArguments(path: Self.quoted(options.image), bytes: bytes)
            } else if let kata = options.kata {
                arguments += kata.diskArguments(drive: drive)
            } else {
                arguments += ["-drive", drive] + machine.diskDeviceArguments(drive: "d0", serial: "rootfs") + ["-snapshot"]
            }
        }
        if !kind.bootsItself { arguments += ["-append", try kernelCommandLine(kind: kind)] }
        if let cpus = options.cpus { arguments += ["-smp", String(cpus)] }
        for (index, extra) in options.extraDisks.enumerated() {
            guard case .file(let disk) = extra else { throw RootfsError("a scratch disk is made when the boot starts (QEMUBoot.attempt)") }
            // NVMe: built into Debian's kernels (virtio-blk is a module). Same quoting as the root disk.
            let format = ImageFile(path: disk).map { file in
                defer { file.close() }
                return file.read(at: 0, count: 4) == [0x51, 0x46, 0x49, 0xfb] ? "qcow2,backing=" : "raw"
            } ?? "raw"
            arguments += ["-drive", "if=none,id=x\(index),format=\(format),snapshot=off,\(Self.fileOption(disk))",
                         ] + machine.diskDeviceArguments(drive: "x\(index)", serial: "rootfs-disk\(index)")
        }
        if let network = options.network { arguments += network.qemuArguments }
        if !options.shares.isEmpty {
            // vhost-user needs the guest's memory shared with virtiofsd: one memfd backend of -m's size.
            guard !nvdimm else { throw RootfsError("--share cannot be combined with --kata-root pmem (its memory is laid out for the NVDIMM)") }
            arguments += ["-object", "memory-backend-memfd,id=mem,size=\(options.memoryMB)M,share=on", "-numa", "node,memdev=mem"]
            for (index, socket) in shareSockets.enumerated() {
                arguments += ["-chardev", "socket,id=fs\(index),path=\(Self.quoted(socket))",
                              "-device", "vhost-user-fs-pci,chardev=fs\(index),tag=\(GuestShare.tag(index))"]
            }
        }
        if options.interactive {
            // ttyS0 (console and the command) on the terminal, ttyS1 (status) to a file.
            arguments += ["-serial", "mon:stdio",
                          "-chardev", "file,id=status,append=on,path=\(Self.quoted(statusLog))"] + machine.extraPort(chardev: "status")
        } else {
            // ttyS0 (console) to a file, ttyS1 (the command's output) on stdout, ttyS2 (status)
            // to a file. append=on: QEMU writes with O_APPEND, so the watcher can cut the
            // console file back when a guest floods it. Under OVMF the output and status move
            // to COM3 and COM4 (ttyS2, ttyS3): OVMF writes its console (and the EFI stub's lines)
            // to COM1 and COM2, the only ports its SioBusDxe knows; COM2 goes nowhere.
            arguments += ["-monitor", "none",
                          "-chardev", "file,id=console,append=on,path=\(Self.quoted(consoleLog))", "-serial", "chardev:console"]
            arguments += machine.extraPortsAreDevices ? ["-chardev", "stdio,id=output"] + machine.extraPort(chardev: "output")
                : (usesEFI(kind) ? ["-serial", "null"] : []) + ["-serial", "stdio"]
            arguments += ["-chardev", "file,id=status,append=on,path=\(Self.quoted(statusLog))"] + machine.extraPort(chardev: "status")
        }
        // Last, as given: the user's own options (QEMU takes a later option over an earlier one).
        return ToolCommand(options.qemuExecutable, arguments + options.extraQEMUArguments)
    }

    /// A value inside a QEMU option list (`-drive a=b,c=d`): a comma is written twice,
    /// so a path like `disk.img,snapshot=off` stays one value and adds no option.
    public static func quoted(_ value: String) -> String {
        value.replacingOccurrences(of: ",", with: ",,")
    }

    /// `file.driver=file,file.filename=PATH` for a -drive.
    static func fileOption(_ path: String) -> String {
        "file.driver=file,file.filename=\(quoted(path))"
    }

    /// Refuses a path QEMU would read as something else than a file name.
    static func checkPath(_ path: String, _ what: String) throws {
        if path.hasPrefix("json:") {
            throw RootfsError("the \(what) \(path) starts with json:, which QEMU reads as block options, not as a file name",
                              hint: "name the file as ./\(path)")
        }
    }

    func kernelPath() throws -> String {
        guard let kernel = options.kernel else {
            throw RootfsError("no kernel to boot \(options.image) with",
                              hint: "pass --kernel FILE (an initrd NAME-initrd.img finds NAME-kernel next to it)")
        }
        return kernel
    }

    /// Whether QEMU starts OVMF: for what only UEFI boots, an EFI ISO, or when `--firmware efi` asks.
    func usesEFI(_ kind: BootImageKind) -> Bool {
        if case .efiISO = kind { return true }
        return kind.needsEFI || options.firmware == .efi
    }

    /// The kind as the firmware choice makes it: a hybrid ISO with `--firmware bios` is an ISO
    /// SeaBIOS boots; what only UEFI boots is refused with `--firmware bios`.
    func applyingFirmware(_ kind: BootImageKind) throws -> BootImageKind {
        guard options.firmware == .bios else { return kind }
        if case .efiISO(bios: true) = kind { return .iso }
        if kind.needsEFI {
            throw RootfsError("\(options.image) boots with UEFI firmware only (\(kind == .uki ? "a unified kernel image" : kind.disk != nil ? "an EFI system partition disk" : "an EFI-only ISO")), not with --firmware bios",
                              hint: "drop --firmware bios (OVMF boots it), or write --format iso-hybrid for an ISO that boots both ways")
        }
        return kind
    }

    /// Whether the run stops at the ready line (no command, not interactive).
    var stopsWhenReady: Bool { options.command.isEmpty && !options.interactive }

    /// The options completed for an image: a bundle's kernel and cmdline next to its initrd.
    public static func resolve(_ options: BootOptions, kind: BootImageKind) -> BootOptions {
        var resolved = options
        var companions: (kernel: String?, cmdline: String?) = (nil, nil)
        if kind == .initrd {
            companions = BootImageKind.bundleCompanions(ofInitrd: options.image)
            // The image says what it is: the ELF machine of its init picks the QEMU machine.
            if resolved.architecture == nil { resolved.architecture = GuestArchitecture.ofInitrd(options.image) }
        }
        // kernel+squashfs, kernel+erofs: NAME-kernel and NAME-cmdline next to NAME-squashfs.img / NAME-erofs.img.
        if let disk = kind.disk, disk.table == .none, disk.filesystem == .squashfs || disk.filesystem == .erofs {
            companions = BootImageKind.bundleCompanions(of: options.image, suffix: "-\(disk.filesystem.rawValue).img")
        }
        if kind == .uki { companions.cmdline = BootImageKind.ukiCommandLine(path: options.image) }
        if resolved.kernel == nil { resolved.kernel = companions.kernel }
        if resolved.imageCommandLine.isEmpty, let cmdline = companions.cmdline { resolved.imageCommandLine = cmdline }
        return resolved
    }

    // MARK: Running

    /// Boots, runs the command and returns the agent's status. Output of the
    /// command goes to `onOutput` unchanged; progress notes to `onNote`.
    public func run(onOutput: @escaping @Sendable ([UInt8]) -> Void,
                    onNote: @escaping @Sendable (String) -> Void) async throws -> BootResult {
        try Self.checkPath(options.image, "image")
        if let kernel = options.kernel { try Self.checkPath(kernel, "kernel") }
        if let initrd = options.initrd { try Self.checkPath(initrd, "initrd") }
        guard FileManager.default.isReadableFile(atPath: options.image) else {
            throw RootfsError("cannot read the image \(options.image)")
        }
        let kind = try applyingFirmware(try await BootImageKind.detect(path: options.image, runner: runner))
        var resolved = Self.resolve(options, kind: kind)
        // The image says what it is: an initrd's /init, a disk's /sbin/init. --arch that disagrees is refused.
        let content: Architecture?
        if kind == .initrd {
            // resolve() read it already when --arch was not given.
            content = options.architecture == nil ? resolved.architecture : GuestArchitecture.ofInitrd(options.image)
        } else if kind.disk?.filesystem == .ext4 && !kind.bootsItself {
            content = await GuestArchitecture.ofDisk(options.image, runner: runner)
        } else {
            content = nil
        }
        if let content {
            if let given = options.architecture, given != content {
                throw RootfsError("--arch \(given.rawValue) disagrees with \(options.image): its init is an \(content.rawValue) ELF file",
                                  hint: "drop --arch (the image's own architecture, \(content.rawValue), is used), or boot an image built for \(given.rawValue)")
            }
            resolved.architecture = content
        }
        var boot = QEMUBoot(options: resolved)
        boot.runner = runner
        return try await boot.run(kind: kind, onOutput: onOutput, onNote: onNote)
    }

    func run(kind: BootImageKind, onOutput: @escaping @Sendable ([UInt8]) -> Void,
             onNote: @escaping @Sendable (String) -> Void) async throws -> BootResult {
        if kind.bootsItself && (!options.command.isEmpty || options.interactive) {
            _ = try kernelCommandLine(kind: kind)  // throws: an ISO's command line is fixed
        }
        if (kind.bootsItself || kind == .uki) && options.kernel != nil { onNote("ignoring --kernel: the image boots its own kernel") }
        if options.initrd != nil && (kind.disk == nil || kind.bootsItself) {
            let what = kind == .initrd ? "an initrd itself" : kind == .uki ? "a UKI (its initrd is inside)" : kind.disk == nil ? "an ISO" : "an EFI disk (its UKI brings the initrd)"
            throw RootfsError("--initrd boots a disk image with an initramfs; \(options.image) is \(what)", hint: "drop --initrd")
        }
        if usesEFI(kind) && !FileManager.default.isReadableFile(atPath: options.ovmf) {
            throw RootfsError("\(options.image) boots with UEFI firmware and OVMF (\(options.ovmf)) is missing", hint: "apt-get install ovmf")
        }
        let machine = try GuestMachine.forArchitecture(options.architecture ?? Architecture.host ?? .x86_64)
        if !kind.bootsItself && kind != .uki {
            let fetch = "scripts/fetch-test-kernel.sh" + (machine.architecture == .x86_64 ? "" : " --arch \(machine.architecture.rawValue)")
            guard options.kernel != nil else {
                throw RootfsError("no kernel to boot the \(machine.architecture.rawValue) image \(options.image) with",
                                  hint: "pass --kernel FILE, a kernel for \(machine.architecture.rawValue) (\(fetch) fetches Debian's)")
            }
            let kernel = try kernelPath()
            if !FileManager.default.isReadableFile(atPath: kernel) {
                throw RootfsError("cannot read the kernel \(kernel)", hint: "\(fetch) fetches a Debian cloud kernel")
            }
            if let kernelArchitecture = GuestMachine.kernelArchitecture(kernel), kernelArchitecture != machine.architecture {
                throw RootfsError("the kernel \(kernel) is for \(kernelArchitecture.rawValue), but the image is for \(machine.architecture.rawValue)",
                                  hint: "pass --kernel with a kernel for \(machine.architecture.rawValue) (\(fetch) fetches Debian's), or --arch if the image's architecture was guessed wrong")
            }
        }
        if let initrd = options.initrd, !FileManager.default.isReadableFile(atPath: initrd) {
            throw RootfsError("cannot read the initrd \(initrd)")
        }
        guard ProcessRunner.which(options.qemuExecutable) != nil else {
            throw RootfsError("\(options.qemuExecutable) not found", hint: "apt-get install \(machine.qemuPackage)")
        }
        if machine.architecture != Architecture.host { onNote("booting an \(machine.architecture.rawValue) guest (\(machine.qemuExecutableName))") }
        if let disk = kind.disk { onNote("booting a \(disk)\(usesEFI(kind) ? " with OVMF" : "")") }
        switch kind {
        case .iso: onNote("booting the ISO with the BIOS")
        case .efiISO: onNote("booting the ISO with OVMF (UEFI)")
        case .uki: onNote("booting the unified kernel image with OVMF (UEFI)")
        default: break
        }
        for case .file(let disk) in options.extraDisks {
            try Self.checkPath(disk, "disk")
            guard let file = ImageFile(path: disk) else {
                throw RootfsError("cannot read the disk \(disk)", hint: "--disk takes a size (e.g. 64M) or an existing raw or qcow2 file")
            }
            defer { file.close() }
            let head = file.read(at: 0, count: 4096)
            // A qcow2 naming a backing or data file would hand that file to the guest.
            if head.prefix(4) == [0x51, 0x46, 0x49, 0xfb] { try ContainerHeader.qcow2(path: disk, head: head) }
        }
        var boot = self
        if !options.shares.isEmpty && GuestShare.virtiofsd() == nil {
            throw RootfsError("--share needs virtiofsd, which is not installed", hint: "apt-get install qemu-system-common (Debian 12 has /usr/lib/qemu/virtiofsd) or virtiofsd")
        }
        let wanted = (options.network != nil ? GuestNetwork.moduleNames : []) + (options.shares.isEmpty ? [] : GuestShare.moduleNames)
        if !wanted.isEmpty, let kernel = options.kernel, let directory = KataStageOneInitrd.modulesDirectory(nextTo: kernel) {
            boot.guestModules = try await GuestNetwork.modules(wanted, modulesDirectory: directory)
            if !boot.guestModules.isEmpty && kind != .initrd {
                onNote("the kernel's virtio drivers are modules, which only an initrd boot brings along: the guest needs them in its own image")
                boot.guestModules = []
            }
        }
        let accelerator = await chooseAccelerator(onNote: onNote)
        return try await boot.attempt(kind: kind, accelerator: accelerator, onOutput: onOutput, onNote: onNote)
    }

    func attempt(kind: BootImageKind, accelerator: Accelerator,
                 onOutput: @escaping @Sendable ([UInt8]) -> Void,
                 onNote: @escaping @Sendable (String) -> Void) async throws -> BootResult {
        // mkdtemp: 0700 and ours; the logs inside are created 0600 before QEMU opens them.
        let directory = try FS.makeSiblingTemporaryDirectory(for: FileManager.default.temporaryDirectory.path + "/rootfs-boot")
        defer { FS.remove(directory) }
        let consoleLog = directory + "/console.log"
        let statusLog = directory + "/status.log"
        for log in [consoleLog, statusLog] {
            var file = try OwnedFileDescriptor(path: log, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
            try file.close()
        }
        var boot = self
        // Scratch disks live in the work directory: removed with it, whatever ends the boot.
        boot.options.extraDisks = try options.extraDisks.enumerated().map { index, disk in
            guard case .scratch(let bytes) = disk else { return disk }
            let path = directory + "/scratch\(index).raw"
            try ScratchDisk.create(at: path, bytes: bytes)
            return .file(path)
        }
        if !guestModules.isEmpty, kind == .initrd {
            let combined = directory + "/initrd"
            try GuestNetwork.initrd(options.image, adding: guestModules, to: combined)
            boot.initrdImage = combined
        }
        boot.shareSockets = options.shares.indices.map { directory + "/share\($0).sock" }
        let command = try boot.qemuCommand(kind: kind, accelerator: accelerator, consoleLog: consoleLog, statusLog: statusLog)

        let watcher = ConsoleWatcher(statusPath: statusLog, consolePath: options.interactive ? nil : consoleLog,
                                     tailLimit: Self.tailLines, readyFromConsole: kind.bootsItself && stopsWhenReady,
                                     onConsole: options.onConsole)
        let timeout = options.timeout
        let stopsWhenReady = stopsWhenReady
        let started = ContinuousClock.now
        let outcome = try await GuestShare.serving(options.shares, sockets: boot.shareSockets, runner: runner) {
        try await runner.supervise(command, io: options.interactive ? .terminal : .pipes,
                                                 onOutput: onOutput) { control in
            while !Task.isCancelled {
                let elapsed = Self.seconds(ContinuousClock.now - started)
                for event in watcher.poll() where event == .ready {
                    watcher.markReady(after: elapsed)
                    onNote(String(format: "ready in %.1f s", elapsed))
                    if stopsWhenReady {
                        // Nothing to run: the guest has proven it boots; stop it (it is a snapshot).
                        watcher.markStopped()
                        control.kill()
                        return
                    }
                }
                if control.hasExited { return }
                if elapsed > timeout {
                    watcher.markTimedOut()
                    control.kill()
                    return
                }
                try? await Task.sleep(for: .milliseconds(50))
            }
            // Cancelled (a signal reached rootfs): QEMU goes now, so the work directory can go.
            control.kill()
        }
        }
        // What QEMU wrote last: a guest that became ready, ran its command and powered
        // off between two polls (or after the loop stopped with QEMU) still counts.
        // Bounded: the files are read to their end at most 64 polls' worth.
        for event in watcher.drain() where event == .ready {
            watcher.markReady(after: Self.seconds(ContinuousClock.now - started))
        }
        let state = watcher.snapshot
        if state.stoppedWhenReady, let readySeconds = state.readySeconds {
            var result = BootResult(status: .exited(0), readySeconds: readySeconds, accelerator: accelerator)
            result.stoppedWhenReady = true
            return result
        }
        if let status = state.final, let readySeconds = state.readySeconds {
            return BootResult(status: status, readySeconds: readySeconds, accelerator: accelerator)
        }

        // Something went wrong: say what, with the console's last lines.
        var details: [String] = []
        let tail = state.panicked ? state.panicTail : state.tail
        if !tail.isEmpty {
            details.append(state.panicked ? "console up to the panic:" : "last console lines:")
            details += tail.map { "  " + $0 }
        }
        let qemuErrors = outcome.standardError.split(separator: "\n").map(String.init)
            .filter { !$0.contains("terminating on signal") }
        if !qemuErrors.isEmpty {
            details.append("qemu said:")
            details += qemuErrors.suffix(10).map { "  " + $0 }
        }
        if let verity = options.verity, let line = VerityBoot.corruption(in: state.tail + state.panicTail) {
            throw RootfsError("dm-verity refused a block of \(options.image): its content does not match the root hash in \(verity.rootHashFile) (the image was changed after it was built)",
                              hint: "rebuild the image with --verity, or restore it; the guest said: \(line.trimmingCharacters(in: .whitespaces))",
                              details: details)
        }
        let timeoutText = String(format: "%g", timeout)
        if state.timedOut {
            // 124, as timeout(1) and `docker run` say it: a timeout is neither the guest's status nor rootfs's failure.
            var error = state.readySeconds == nil
                ? RootfsError("the guest did not become ready within \(timeoutText) s", hint: kind.bootsItself
                    ? "the ISO's kernel command line needs console=ttyS0 (rootfs image --cmdline) and the agent as init; a slow machine may need a longer --timeout"
                    : "is rootfs-agent the guest's init? A slow machine may need a longer --timeout", details: details)
                : RootfsError("the command did not finish within \(timeoutText) s", hint: "raise --timeout", details: details)
            error.exitStatus = Self.timeoutExitStatus
            throw error
        }
        if state.panicked {
            throw RootfsError("the guest kernel panicked" + (state.readySeconds == nil ? " before the agent was ready" : ""),
                              hint: state.readySeconds == nil
                                  ? "an initrd needs an executable /init (rootfs-agent); a disk image needs /sbin/init on its first partition"
                                  : nil,
                              details: details)
        }
        switch outcome.exit {
        case .exited(0): break
        case .exited(let code):
            throw RootfsError("\(command.toolName) failed (exit status \(code))", details: details)
        case .signaled(let signal):
            throw RootfsError("\(command.toolName) was killed by signal \(signal)", hint: accelerator == .kvm
                ? "KVM may not work on this machine: try --accel tcg" : nil, details: details)
        }
        if state.readySeconds == nil {
            throw RootfsError("the guest stopped before the agent was ready", hint: "is rootfs-agent the guest's init?", details: details)
        }
        throw RootfsError("the guest stopped before the command finished", details: details)
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    // MARK: KVM

    /// KVM if asked for or if it works here, else TCG (with a note saying why).
    func chooseAccelerator(onNote: @Sendable (String) -> Void) async -> Accelerator {
        switch options.accelerator {
        case .kvm, .tcg: return options.accelerator
        case .auto: break
        }
        // KVM runs guests of the host's own architecture only.
        guard options.machine.kvmPossible else { return .tcg }
        guard options.kernel != nil else {
            // The probe boots a kernel; an ISO brings its own, inside.
            if let known = KVMProbeCache().load(), known.usable { return .kvm }
            return .tcg
        }
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return .tcg }  // no KVM here: TCG without fuss
        close(fd)
        let cache = KVMProbeCache()
        if let known = cache.load() {
            if !known.usable { onNote("using TCG: KVM does not work here (\(known.reason))") }
            return known.usable ? .kvm : .tcg
        }
        let (usable, reason) = await probeKVM()
        cache.store(usable: usable, reason: reason)
        if !usable { onNote("using TCG: KVM does not work here (\(reason))") }
        return usable ? .kvm : .tcg
    }

    /// Starts the kernel under KVM and waits for the kernel's first console line
    /// (`Linux version`): some hosts have a /dev/kvm whose guests hang or abort.
    /// Not any byte: the firmware (SeaBIOS) prints before the kernel runs, and on
    /// hosts where KVM guests hang early that output alone would pass the probe.
    func probeKVM() async -> (Bool, String) {
        let command = ToolCommand(options.qemuExecutable, [
            "-accel", "kvm", "-cpu", "host", "-m", "128", "-nographic", "-no-reboot", "-nic", "none",
            "-monitor", "none", "-serial", "stdio", "-kernel", options.kernel ?? "", "-append", "console=ttyS0 panic=-1",
        ])
        let sawOutput = Flag()
        let seen = Mutex<[UInt8]>([])
        let marker = Array("Linux version".utf8)
        let limit = options.kvmProbeSeconds
        do {
            let outcome = try await runner.supervise(command, io: .pipes, onOutput: { bytes in
                seen.withLock { seen in
                    seen += bytes
                    if ConsoleTail.contains(seen, marker) { sawOutput.set() }
                    if seen.count > 4096 { seen.removeFirst(seen.count - marker.count) }  // bounded
                }
            }) { control in
                let started = ContinuousClock.now
                while !Task.isCancelled && !sawOutput.isSet && !control.hasExited
                    && Self.seconds(ContinuousClock.now - started) < limit {
                    try? await Task.sleep(for: .milliseconds(50))
                }
                control.kill()
            }
            if sawOutput.isSet { return (true, "") }
            // "qemu-system-x86_64: ../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion ... failed."
            var said = outcome.standardError.split(separator: "\n").last.map(String.init) ?? ""
            if said.hasPrefix(options.qemuExecutable + ": ") { said.removeFirst(options.qemuExecutable.count + 2) }
            if let location = try? Regex(#"^\S+\.c:\d+: "#) { said.replace(location, with: "") }  // QEMU's source file and line
            while said.hasSuffix(".") { said.removeLast() }
            return (false, said.isEmpty ? "the kernel printed nothing within \(String(format: "%g", limit)) s" : said)
        } catch {
            return (false, "\(error)")
        }
    }
}

/// Remembers the KVM probe's verdict until the host reboots, in a directory
/// of the user's own (`$TMPDIR/rootfs-UID`, 0700). A verdict is believed only
/// from there: a predictable name in a shared /tmp could be planted by anyone
/// (a fake "usable" sends every boot to a hanging KVM). The `v2` name leaves
/// behind verdicts of the old probe, which any firmware byte passed.
struct KVMProbeCache {
    var directory = FileManager.default.temporaryDirectory.path + "/rootfs-\(getuid())"
    var path: String { directory + "/kvm-probe-v2" }
    var bootID: String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    }

    /// The directory when it is ours: a real directory, owned by us, closed to others.
    func ownDirectory(create: Bool) -> String? {
        if create { _ = mkdir(directory, 0o700) }
        var st = stat()
        guard lstat(directory, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR,
              st.st_uid == getuid(), st.st_mode & 0o077 == 0 else { return nil }
        return directory
    }

    func load() -> (usable: Bool, reason: String)? {
        guard ownDirectory(create: false) != nil else { return nil }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        let file = OwnedFileDescriptor(taking: fd, name: path)
        var st = stat()
        guard fstat(file.raw, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == getuid(),
              let bytes = try? file.read(count: 4096, at: 0) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2, !bootID.isEmpty, lines[0] == bootID else { return nil }
        return (lines[1] == "usable", lines.count > 2 ? lines[2] : "")
    }

    func store(usable: Bool, reason: String) {
        guard ownDirectory(create: true) != nil else { return }
        let temporary = path + ".tmp-\(getpid())"
        guard let file = try? OwnedFileDescriptor(path: temporary, flags: O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode: 0o600)
        else { return }
        let text = "\(bootID)\n\(usable ? "usable" : "unusable")\n\(reason)\n"
        if (try? file.writeAll(Array(text.utf8))) == nil || rename(temporary, path) != 0 { unlink(temporary) }
    }
}

/// A thread-safe boolean.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

/// Follows the agent's status device and the guest console (files QEMU
/// writes) while the guest runs. Only the status device decides how the boot
/// ended (`StatusStream`); the console gives the error messages their tail
/// and tells a kernel panic (`ConsoleTail`). Every poll reads a bounded
/// amount, so a flooding guest can neither exhaust memory nor hold up the
/// supervisor's timeout check.
final class ConsoleWatcher: Sendable {
    struct State: Sendable {
        var readySeconds: Double?
        var final: AgentProtocol.Status?
        var panicked = false
        var timedOut = false
        var stoppedWhenReady = false
        var tail: [String] = []
        /// The console's last lines up to the kernel's panic message.
        var panicTail: [String] = []
    }

    /// Bytes of console read per poll at most (the poll runs every 50 ms).
    static let consoleReadLimit = 1 << 20
    /// Bytes of the status device read per poll at most: its lines are short.
    static let statusReadLimit = 64 << 10
    /// The console file is cut back to empty once this much of it has been read.
    static let consoleFileLimit: Int64 = 8 << 20

    private struct Streams: Sendable {
        var status = StatusStream()
        var console: ConsoleTail
        /// An ISO's command line is fixed when it is written, so its agent announces
        /// `ready` on the console only. Only that event is taken from the console (and
        /// only when no command runs): a final status never is.
        var consoleReady: StatusStream?
        var state = State()

        mutating func feed(status bytes: [UInt8], console consoleBytes: [UInt8]) -> [StatusStream.Event] {
            console.feed(consoleBytes)
            var events = status.feed(bytes)
            if consoleReady != nil, let fromConsole = consoleReady?.feed(consoleBytes) {
                events += fromConsole.filter { $0 == .ready }
            }
            return events
        }
    }

    private let streams: Mutex<Streams>
    private let statusFile: FileFollower
    private let consoleFile: FileFollower?
    /// Gets every console byte read (`rootfs boot --console`).
    private let onConsole: (@Sendable ([UInt8]) -> Void)?

    /// `console`: nil when the console is the user's terminal (interactive runs).
    init(statusPath: String, consolePath: String?, tailLimit: Int, readyFromConsole: Bool = false,
         onConsole: (@Sendable ([UInt8]) -> Void)? = nil) {
        self.onConsole = onConsole
        statusFile = FileFollower(path: statusPath)
        consoleFile = consolePath.map { FileFollower(path: $0, truncateAbove: Self.consoleFileLimit) }
        streams = Mutex(Streams(console: ConsoleTail(lineLimit: tailLimit), consoleReady: readyFromConsole ? StatusStream() : nil))
    }

    var snapshot: State {
        streams.withLock { streams in
            var state = streams.state
            state.final = streams.status.final
            state.panicked = streams.console.panicked
            state.tail = streams.console.tail
            state.panicTail = streams.console.panicTail
            return state
        }
    }
    func markReady(after seconds: Double) { streams.withLock { if $0.state.readySeconds == nil { $0.state.readySeconds = seconds } } }
    func markTimedOut() { streams.withLock { $0.state.timedOut = true } }
    func markStopped() { streams.withLock { $0.state.stoppedWhenReady = true } }

    /// Reads what is new (a bounded amount) and returns the protocol events in it.
    func poll() -> [StatusStream.Event] {
        let status = statusFile.read(limit: Self.statusReadLimit)
        let console = consoleFile?.read(limit: Self.consoleReadLimit) ?? []
        if !console.isEmpty { onConsole?(console) }
        return streams.withLock { $0.feed(status: status, console: console) }
    }

    /// Polls until both files are read to their end, at most 64 polls' worth
    /// (what a flooding guest wrote beyond that is its console's, not the status's).
    func drain() -> [StatusStream.Event] {
        var events: [StatusStream.Event] = []
        for _ in 0..<64 {
            let status = statusFile.read(limit: Self.statusReadLimit)
            let console = consoleFile?.read(limit: Self.consoleReadLimit) ?? []
            if status.isEmpty && console.isEmpty { break }
            if !console.isEmpty { onConsole?(console) }
            events += streams.withLock { $0.feed(status: status, console: console) }
        }
        return events
    }

    /// Feeds bytes directly (tests).
    func feed(status: [UInt8], console: [UInt8]) -> [StatusStream.Event] {
        streams.withLock { $0.feed(status: status, console: console) }
    }

    /// A console line without carriage returns and terminal escape sequences.
    static func printable(_ bytes: ArraySlice<UInt8>) -> String {
        var out: [UInt8] = []
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == 0x1b {
                // Skip ESC [ ... final byte (0x40-0x7e).
                index += 1
                if index < bytes.endIndex && bytes[index] == UInt8(ascii: "[") {
                    index += 1
                    while index < bytes.endIndex && !(0x40...0x7e).contains(bytes[index]) { index += 1 }
                }
                index += 1
                continue
            }
            if (byte >= 0x20 && byte != 0x7f) || byte == 0x09 { out.append(byte) }
            index += 1
        }
        // C1 controls (U+0080-U+009F, UTF-8 C2 80-C2 9F) too: U+009B is a CSI on many terminals.
        var text = String(decoding: out, as: UTF8.self)
        text.unicodeScalars.removeAll { (0x80...0x9f).contains($0.value) }
        return text
    }
}

/// Console text for people (`rootfs boot --console`): the watcher's own cleaning.
public enum ConsoleText {
    /// A console line without carriage returns and terminal escape sequences.
    public static func printable(_ bytes: ArraySlice<UInt8>) -> String { ConsoleWatcher.printable(bytes) }
}
