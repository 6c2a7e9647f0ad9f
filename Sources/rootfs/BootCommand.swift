import ArgumentParser
import Foundation
import RootfsKit

struct BootCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "boot",
        abstract: "Boot an initrd, ISO or disk image in QEMU and run a command in it.",
        discussion: """
        The image's init must be rootfs-agent (see docs/AGENT.md). The command's \
        output goes to stdout and rootfs exits with the command's exit status. \
        Without a command, the guest is stopped as soon as the agent is ready \
        (the time to ready is printed). The kind is read from the content: initrd, \
        ISO (BIOS), raw (MBR, GPT or bare ext4/erofs), VHD, qcow2, vmdk. Disk images \
        are booted with -snapshot: they are never modified.
        """
    )

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

    @Flag(help: "Attach the terminal to the guest console (default command: /bin/sh).")
    var interactive = false

    @Argument(parsing: .postTerminator, help: "The command to run in the guest, after --.")
    var command: [String] = []

    func validate() throws {
        guard Accelerator(rawValue: accel) != nil else {
            throw ValidationError("--accel must be auto, kvm or tcg")
        }
        guard timeout > 0, memory >= 64 else {
            throw ValidationError("--timeout must be positive and --memory at least 64")
        }
    }

    func run() async throws {
        var options = BootOptions(image: image, kernel: kernel, command: command)
        options.initrd = initrd
        options.timeout = timeout
        options.memoryMB = memory
        options.append = append
        options.interactive = interactive
        options.accelerator = Accelerator(rawValue: accel) ?? .auto
        options.term = ProcessInfo.processInfo.environment["TERM"]
        let boot = QEMUBoot(options: options)
        let signalSources = Self.stopQEMUOnSignals(interactive: interactive)
        defer { signalSources.forEach { $0.cancel() } }
        let result = try await boot.run(
            onOutput: { bytes in FileHandle.standardOutput.write(Data(bytes)) },
            onNote: { note in FileHandle.standardError.write(Data("rootfs: \(note)\n".utf8)) }
        )
        if result.stoppedWhenReady {
            FileHandle.standardError.write(Data(String(format: "rootfs: booted: ready in %.1f s (%@), guest stopped\n",
                                                       result.readySeconds, result.accelerator.rawValue).utf8))
        }
        if result.exitStatus != 0 {
            throw ExitCode(result.exitStatus)
        }
    }

    /// On SIGTERM, SIGHUP and (unless the guest owns the terminal) SIGINT:
    /// kill QEMU first, then exit as the signal would have.
    static func stopQEMUOnSignals(interactive: Bool) -> [DispatchSourceSignal] {
        let signals = interactive ? [SIGTERM, SIGHUP] : [SIGINT, SIGTERM, SIGHUP]
        return signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                SupervisedProcesses.killAll()
                Foundation.exit(128 + number)
            }
            source.resume()
            return source
        }
    }
}
