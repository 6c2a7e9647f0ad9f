import ArgumentParser
import Foundation
import RootfsKit
import Synchronization

struct BootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot an initrd, ISO or disk image in QEMU and run a command in it.",
        discussion: """
        The guest must run an agent that speaks rootfs's agent protocol (docs/AGENT.md): \
        rootfs-agent as the init, or started by the guest's own init (systemd, as `rootfs build` \
        installs it), or any other agent that follows the protocol. The command's \
        output goes to stdout and rootfs exits with the command's exit status. \
        Without a command, the guest is stopped as soon as the agent is ready \
        (the time to ready is printed). The kind is read from the content: initrd, \
        ISO (BIOS, EFI, hybrid), unified kernel image, raw (MBR, GPT, an EFI system \
        partition disk, or bare ext4/erofs/squashfs), VHD, VHDX, qcow2, vmdk; LinuxKit's \
        NAME-squashfs.img / NAME-erofs.img find NAME-kernel and NAME-cmdline. EFI images \
        boot with OVMF. Disk images are booted with -snapshot: they are never modified.

        Exit status, as `docker run`: the guest command's own status (128+N when signal N \
        killed it); 124 when --timeout ran out; 125 when rootfs or QEMU failed (a bad \
        image, a usage error, a --qemu-arg QEMU refused, a kernel panic).

        \(BootCommand.examples)
        """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "An initrd (cpio, plain or compressed), an ISO, or a disk image (raw, VHD, qcow2, vmdk).")
    var image: String

    @Option(help: ArgumentHelp("The kernel to boot (not for an ISO; NAME-initrd.img defaults to NAME-kernel next to it).", valueName: "file"))
    var kernel: String?

    @Option(help: ArgumentHelp("An initramfs to boot a disk image with (e.g. one that loads the root file system's module).", valueName: "file"))
    var initrd: String?

    @Option(help: ArgumentHelp("Seconds until the guest must have finished.", valueName: "s"))
    var timeout: Double = 120

    @Option(help: ArgumentHelp("Guest memory in MiB.", valueName: "mb"))
    var memory: Int = 512

    @Option(help: ArgumentHelp("Extra kernel parameters.", valueName: "args"))
    var append: String = ""

    @Option(help: "Accelerator: auto (KVM when it works, else TCG), kvm or tcg.")
    var accel: String = "auto"

    @Option(help: ArgumentHelp("The guest's architecture: x86_64, aarch64, s390x or ppc64le (default: the ELF machine of the image's init, an initrd's /init or an ext4 disk's /sbin/init, else the host's).", valueName: "arch"))
    var arch: String?

    @Flag(help: "Boot a disk image the way Kata's runtime does: Kata's kernel parameters (systemd.unit=kata-containers.target...), the root read-only on virtio-blk /dev/vda1 or an NVDIMM /dev/pmem0p1 (--kata-root); a stage-1 initrd with the modules when the kernel's package has them (docs/AGENT.md).")
    var kata = false
    @Option(name: .customLong("kata-root"), help: ArgumentHelp("--kata: attach the image as virtio-blk (default; root /dev/vda1) or pmem (an NVDIMM backed by the raw image file, as Kata's runtime does by default; root /dev/pmem0p1, mounted with dax when the image has Kata's DAX header).", valueName: "virtio-blk|pmem"))
    var kataRoot: KataBoot.Root?
    @Option(help: ArgumentHelp("The kernel's lib/modules/<version> for a stage-1 initrd (--kata's virtio-blk or pmem root; a squashfs or erofs root's module; default: next to the kernel, ROOT/boot/vmlinuz-V -> ROOT/lib/modules/V).", valueName: "dir"))
    var modules: String?
    @Option(help: "Firmware: auto (OVMF for a UKI, an EFI ISO or an EFI system partition disk, else SeaBIOS), bios (a hybrid ISO's isolinux) or efi (OVMF).")
    var firmware: String = "auto"
    @Option(name: .customLong("root-hash"), help: ArgumentHelp("A verity disk's root-hash file (Kata's root_hash_<variant>.txt; default: the one next to the image that matches it). It is checked against the image before the guest starts.", valueName: "file"))
    var rootHash: String?
    @Flag(help: "Attach the terminal to the guest console (default command: /bin/sh).")
    var interactive = false

    @Flag(help: "Print one JSON document (exit status, accelerator, ready time, the command's output) instead of streaming the output.")
    var json = false

    @Flag(help: "Stream the guest console (kernel and daemons) to stderr as it runs (-v does too; --log-file always gets it).")
    var console = false

    @Option(help: ArgumentHelp("Virtual CPUs (QEMU's -smp).", valueName: "n"))
    var cpus: Int?

    @Option(help: ArgumentHelp("user: QEMU's user-mode network on a virtio-net card; the agent gives the guest's eth0 10.0.2.15/24, gateway 10.0.2.2.", valueName: "user"))
    var net: String?

    @Option(help: ArgumentHelp("With --net user: 127.0.0.1:HOST on the host reaches the guest's port GUEST (repeatable; udp:HOST:GUEST for UDP).", valueName: "HOST:GUEST"))
    var publish: [String] = []

    @Option(help: ArgumentHelp("An extra NVMe disk (repeatable): a SIZE (64M, 1G) makes a sparse scratch disk removed after the boot; a FILE (raw or qcow2) is written to.", valueName: "SIZE|FILE"))
    var disk: [String] = []

    @Option(help: ArgumentHelp("Mount host directory HOSTDIR on GUESTDIR in the guest (repeatable; virtiofs served by virtiofsd, read-write).", valueName: "HOSTDIR=GUESTDIR"))
    var share: [String] = []

    @Option(name: .customLong("qemu-arg"), parsing: .unconditionalSingleValue, help: ArgumentHelp("One QEMU argument, passed verbatim after rootfs's own (repeatable: --qemu-arg -device --qemu-arg virtio-rng-pci).", valueName: "ARG"))
    var qemuArg: [String] = []

    @Argument(parsing: .postTerminator, help: "The command to run in the guest, after --.")
    var command: [String] = []

    func validate() throws {
        guard Firmware(rawValue: firmware) != nil else {
            throw ValidationError("--firmware must be auto, bios or efi")
        }
        guard Accelerator(rawValue: accel) != nil else {
            throw ValidationError("--accel must be auto, kvm or tcg")
        }
        guard timeout > 0, memory >= 64 else {
            throw ValidationError("--timeout must be positive and --memory at least 64")
        }
        if json && interactive { throw ValidationError("--json captures the output: it cannot be combined with --interactive") }
        if let cpus, cpus < 1 || cpus > 255 { throw ValidationError("--cpus \(cpus): give a number of virtual CPUs from 1 to 255") }
        if let net, net != "user" { throw ValidationError("--net \(net): the one network is user (QEMU's user-mode network)") }
        if !publish.isEmpty && net == nil { throw ValidationError("--publish needs --net user") }
        for port in publish { _ = try GuestNetwork.Port.parse(port) }
        for value in disk { _ = try ExtraDisk.parse(value) }
        for value in share { _ = try GuestShare.parse(value) }
    }

    /// The console's bytes as lines for `Console` (the log file, and stderr with --console or -v).
    final class ConsoleLines: Sendable {
        private let pending = Mutex<[UInt8]>([])
        let emit: @Sendable (String) -> Void
        init(_ emit: @escaping @Sendable (String) -> Void) { self.emit = emit }
        func feed(_ bytes: [UInt8]) {
            let lines: [String] = pending.withLock { pending in
                pending += bytes
                var out: [String] = []
                while let newline = pending.firstIndex(of: 0x0a) {
                    out.append(ConsoleText.printable(pending[..<newline]))
                    pending.removeSubrange(...newline)
                }
                // A line without end is shown in pieces rather than held without bound.
                if pending.count > 4096 { out.append(ConsoleText.printable(pending[...])); pending.removeAll() }
                return out
            }
            for line in lines { emit("guest: " + line) }
        }
    }

    func run() async throws {
        let log = global.makeConsole(json: json)
        // One signal path with every other command: a signal cancels the boot, QEMU is
        // stopped and the boot's work directory removed before rootfs exits. Interactive:
        // Ctrl-C belongs to the guest's terminal.
        let signals = interactive ? CommandRunner.stopSignals.filter { $0 != SIGINT } : CommandRunner.stopSignals
        let this = self
        // 125 for every failure of rootfs's or QEMU's own, so a guest's exit status 1 stays the guest's.
        try await CommandRunner.run(json: json, signals: signals, failureStatus: QEMUBoot.failureExitStatus) {
            try await this.boot(log: log)
        }
    }

    func boot(log: Console) async throws {
        let note: @Sendable (String) -> Void = { note in log.info("rootfs: \(note)") }
        var options = BootOptions(image: image, kernel: kernel, command: command)
        options.initrd = initrd
        options.firmware = Firmware(rawValue: firmware) ?? .auto
        let verityStage = try await verityOptions(&options, onNote: note)
        defer { if let verityStage { FS.remove(verityStage) } }
        let stageOne: String?
        do {
            stageOne = try await kata ? kataOptions(&options) : rootModuleOptions(&options)
        } catch let error as ValidationError {
            throw RootfsError(error.message)
        }
        defer { if let stageOne { FS.remove(stageOne) } }
        options.timeout = timeout
        options.memoryMB = memory
        options.append = append
        options.interactive = interactive
        options.accelerator = Accelerator(rawValue: accel) ?? .auto
        options.architecture = try arch.map { try Architecture.parse($0, option: "--arch") }
        options.term = ProcessInfo.processInfo.environment["TERM"]
        options.cpus = cpus
        options.extraDisks = try disk.map(ExtraDisk.parse)
        if net != nil { options.network = GuestNetwork(publish: try publish.map(GuestNetwork.Port.parse)) }
        options.shares = try share.map(GuestShare.parse)
        options.extraQEMUArguments = qemuArg
        // The console: into the log file always, on stderr with --console or -v.
        let shown = console
        let lines = ConsoleLines { line in shown ? log.info(line) : log.detail(line) }
        if !interactive { options.onConsole = { lines.feed($0) } }
        let boot = QEMUBoot(options: options)
        guard json else {
            let result = try await boot.run(
                onOutput: { bytes in FileHandle.standardOutput.write(Data(bytes)) },
                onNote: note
            )
            if result.stoppedWhenReady {
                log.info(String(format: "rootfs: booted: ready in %.1f s (%@), guest stopped",
                                result.readySeconds, result.accelerator.rawValue))
            }
            if result.exitStatus != 0 { throw ExitCode(result.exitStatus) }
            return
        }
        let captured = CapturedOutput()
        let notes = CapturedOutput()
        let result = try await boot.run(
            onOutput: { bytes in captured.append(bytes) },
            onNote: { text in
                notes.append(Array((text + "\n").utf8))
                note(text)
            })
        try printJSON(Report(result: result, command: command, output: captured.bytes, outputBytes: captured.total,
                             notes: notes.text.split(separator: "\n").map(String.init)))
        if result.exitStatus != 0 { throw ExitCode(result.exitStatus) }
    }

    /// `--json` output of a boot.
    struct Report: Encodable {
        var command: [String]
        var exitStatus: Int32
        var signal: Int32?
        var readySeconds: Double
        var accelerator: String
        /// The command's output (stdout and stderr as the guest wrote them), as UTF-8 text.
        var output: String
        /// The same bytes, base64, for output that is not UTF-8.
        var outputBase64: String
        /// How many bytes the command wrote; more than `output` holds when it was cut.
        var outputBytes: Int
        /// The output was cut at `CapturedOutput.defaultLimit` bytes.
        var outputTruncated: Bool
        var notes: [String]

        init(result: BootResult, command: [String], output: [UInt8], outputBytes: Int, notes: [String]) {
            self.outputBytes = outputBytes
            outputTruncated = outputBytes > output.count
            self.command = command
            exitStatus = result.exitStatus
            if case .signaled(let number) = result.status { signal = number }
            readySeconds = (result.readySeconds * 1000).rounded() / 1000
            accelerator = result.accelerator.rawValue
            self.output = String(decoding: output, as: UTF8.self)
            outputBase64 = Data(output).base64EncodedString()
            self.notes = notes
        }
    }

    /// Bytes collected from the boot's callbacks, the first `limit` of them: the JSON
    /// document holds the output, so a guest writing without end must not make
    /// rootfs hold it all (`outputTruncated` and `outputBytes` say what was dropped).
    final class CapturedOutput: Sendable {
        static let defaultLimit = 16 << 20
        private struct State { var data: [UInt8] = []; var total = 0 }
        private let state = Mutex(State())
        let limit: Int
        init(limit: Int = CapturedOutput.defaultLimit) { self.limit = limit }
        func append(_ bytes: [UInt8]) {
            state.withLock { state in
                state.total += bytes.count
                let room = limit - state.data.count
                if room > 0 { state.data += bytes.prefix(room) }
            }
        }
        var bytes: [UInt8] { state.withLock { $0.data } }
        var total: Int { state.withLock { $0.total } }
        var text: String { String(decoding: bytes, as: UTF8.self) }
    }
}
