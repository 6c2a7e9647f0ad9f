import AgentProtocol
import Foundation

/// The virtualization back end QEMU uses.
public enum Accelerator: String, Sendable, CaseIterable {
    /// KVM when it works here, TCG otherwise.
    case auto
    /// Hardware virtualization (needs a working /dev/kvm).
    case kvm
    /// QEMU's software emulation: slow, but works everywhere.
    case tcg
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
    /// The guest's hostname (the agent's default when nil).
    public var hostname: String?
    /// TERM for an interactive command.
    public var term: String?
    /// How long a KVM guest may stay silent before KVM counts as broken.
    public var kvmProbeSeconds: Double = 10
    /// `--kata`: Kata's kernel parameters and devices (KataBoot.swift).
    public var kata: KataBoot?

    public init(image: String, kernel: String?, command: [String] = []) {
        self.image = image
        self.kernel = kernel
        self.command = command
    }
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
    /// The kernel's command line limit on x86 (COMMAND_LINE_SIZE), with some room.
    public static let maxCommandLine = 2000
    /// How many console lines an error shows.
    public static let tailLines = 20

    public init(options: BootOptions) {
        self.options = options
    }

    // MARK: Arguments

    /// The guest kernel's command line.
    public func kernelCommandLine(kind: BootImageKind) throws -> String {
        if kind == .iso {
            throw RootfsError("an ISO boots with the kernel command line it was written with",
                              hint: "boot it without a command (rootfs boot waits for the agent to be ready), or boot the kernel+initrd format")
        }
        var parameters: [String] = []
        let fromImage = options.imageCommandLine.trimmingCharacters(in: .whitespaces)
        if !fromImage.isEmpty { parameters.append(fromImage) }
        // no_timer_check: a guest slowed down by TCG on a busy host can fail the IO-APIC
        // timer check and panic ("IO-APIC + timer doesn't work"); a virtual timer needs no check.
        parameters += ["console=ttyS0", "panic=-1", "no_timer_check"]
        if let kata = options.kata, let disk = kind.disk {
            parameters += kata.kernelParameters + kata.rootParameters(filesystem: disk.filesystem == .unknown ? "ext4" : disk.filesystem.rawValue)
        } else if let disk = kind.disk {
            parameters.append("root=\(disk.rootDevice)")
            if disk.filesystem != .unknown { parameters.append("rootfstype=\(disk.filesystem.rawValue)") }
            parameters.append(disk.readOnly ? "ro" : "rw")
        }
        var command = options.command
        if options.interactive {
            parameters += ["quiet", "\(AgentProtocol.ttyParameter)=ttyS0", "\(AgentProtocol.statusParameter)=ttyS1"]
            if let term = options.term, !term.isEmpty, term.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) {
                parameters.append("\(AgentProtocol.termParameter)=\(term)")
            }
            if command.isEmpty { command = ["/bin/sh"] }
        } else {
            parameters.append("\(AgentProtocol.outputParameter)=ttyS1")
        }
        if let hostname = options.hostname {
            parameters.append("\(AgentProtocol.hostnameParameter)=\(hostname)")
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
        switch accelerator {
        case .kvm: arguments += ["-accel", "kvm", "-cpu", "host"]
        case .tcg, .auto: arguments += ["-accel", "tcg"]
        }
        arguments += ["-m", String(options.memoryMB), "-nographic", "-no-reboot", "-nic", "none"]
        switch kind {
        case .iso:
            // The firmware (SeaBIOS) boots the CD: isolinux loads the ISO's own kernel and initrd.
            arguments += ["-cdrom", options.image, "-boot", "d"]
        case .initrd:
            arguments += ["-kernel", try kernelPath(), "-initrd", options.image]
        case .disk(let disk):
            arguments += ["-kernel", try kernelPath()]
            if let initrd = options.initrd { arguments += ["-initrd", initrd] }
            // -snapshot: writes go to a temporary overlay, the image stays as it is.
            if let kata = options.kata {
                arguments += kata.diskArguments(image: options.image, format: disk.container.rawValue)
            } else {
                arguments += ["-drive", "file=\(options.image),if=none,id=d0,format=\(disk.container.rawValue)",
                              "-device", "nvme,drive=d0,serial=rootfs", "-snapshot"]
            }
        }
        if kind != .iso { arguments += ["-append", try kernelCommandLine(kind: kind)] }
        if options.interactive {
            // ttyS0 (console and the command) on the terminal, ttyS1 (status) to a file.
            arguments += ["-serial", "mon:stdio", "-serial", "file:\(statusLog)"]
        } else {
            // ttyS0 (console) to a file, ttyS1 (the command's output) on stdout.
            arguments += ["-monitor", "none", "-serial", "file:\(consoleLog)", "-serial", "stdio"]
        }
        return ToolCommand(options.qemu, arguments)
    }

    func kernelPath() throws -> String {
        guard let kernel = options.kernel else {
            throw RootfsError("no kernel to boot \(options.image) with",
                              hint: "pass --kernel FILE (an initrd NAME-initrd.img finds NAME-kernel next to it)")
        }
        return kernel
    }

    /// Whether the run stops at the ready line (no command, not interactive).
    var stopsWhenReady: Bool { options.command.isEmpty && !options.interactive }

    /// The options completed for an image: a bundle's kernel and cmdline next to its initrd.
    public static func resolve(_ options: BootOptions, kind: BootImageKind) -> BootOptions {
        var resolved = options
        if kind == .initrd {
            let companions = BootImageKind.bundleCompanions(ofInitrd: options.image)
            if resolved.kernel == nil { resolved.kernel = companions.kernel }
            if resolved.imageCommandLine.isEmpty, let cmdline = companions.cmdline { resolved.imageCommandLine = cmdline }
        }
        return resolved
    }

    // MARK: Running

    /// Boots, runs the command and returns the agent's status. Output of the
    /// command goes to `onOutput` unchanged; progress notes to `onNote`.
    public func run(onOutput: @escaping @Sendable ([UInt8]) -> Void,
                    onNote: @escaping @Sendable (String) -> Void) async throws -> BootResult {
        guard FileManager.default.isReadableFile(atPath: options.image) else {
            throw RootfsError("cannot read the image \(options.image)")
        }
        let kind = try await BootImageKind.detect(path: options.image, runner: runner)
        var boot = QEMUBoot(options: Self.resolve(options, kind: kind))
        boot.runner = runner
        return try await boot.run(kind: kind, onOutput: onOutput, onNote: onNote)
    }

    func run(kind: BootImageKind, onOutput: @escaping @Sendable ([UInt8]) -> Void,
             onNote: @escaping @Sendable (String) -> Void) async throws -> BootResult {
        if kind == .iso && (!options.command.isEmpty || options.interactive) {
            _ = try kernelCommandLine(kind: kind)  // throws: an ISO's command line is fixed
        }
        if kind == .iso && options.kernel != nil { onNote("ignoring --kernel: the ISO boots its own kernel") }
        if options.initrd != nil && kind.disk == nil {
            throw RootfsError("--initrd boots a disk image with an initramfs; \(options.image) is \(kind == .iso ? "an ISO" : "an initrd itself")",
                              hint: "drop --initrd")
        }
        if kind != .iso {
            let kernel = try kernelPath()
            if !FileManager.default.isReadableFile(atPath: kernel) {
                throw RootfsError("cannot read the kernel \(kernel)", hint: "scripts/fetch-test-kernel.sh fetches a Debian cloud kernel")
            }
        }
        if let initrd = options.initrd, !FileManager.default.isReadableFile(atPath: initrd) {
            throw RootfsError("cannot read the initrd \(initrd)")
        }
        guard ProcessRunner.which(options.qemu) != nil else {
            throw RootfsError("\(options.qemu) not found", hint: "apt-get install qemu-system-x86")
        }
        if let disk = kind.disk { onNote("booting a \(disk)") } else if kind == .iso { onNote("booting the ISO with the BIOS") }
        let accelerator = await chooseAccelerator(onNote: onNote)
        return try await attempt(kind: kind, accelerator: accelerator, onOutput: onOutput, onNote: onNote)
    }

    func attempt(kind: BootImageKind, accelerator: Accelerator,
                 onOutput: @escaping @Sendable ([UInt8]) -> Void,
                 onNote: @escaping @Sendable (String) -> Void) async throws -> BootResult {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("rootfs-boot-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let consoleLog = directory.appendingPathComponent("console.log").path
        let statusLog = directory.appendingPathComponent("status.log").path
        let command = try qemuCommand(kind: kind, accelerator: accelerator, consoleLog: consoleLog, statusLog: statusLog)

        let watcher = ConsoleWatcher(path: options.interactive ? statusLog : consoleLog, tailLimit: Self.tailLines)
        let timeout = options.timeout
        let stopsWhenReady = stopsWhenReady
        let started = ContinuousClock.now
        let outcome = try await runner.supervise(command, io: options.interactive ? .terminal : .pipes,
                                                 onOutput: onOutput) { control in
            while !Task.isCancelled {
                let elapsed = Self.seconds(ContinuousClock.now - started)
                for status in watcher.poll() where status == .ready {
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
        }
        // What QEMU wrote last: a guest that became ready, ran its command and powered
        // off between two polls (or after the loop stopped with QEMU) still counts.
        for status in watcher.poll() where status == .ready {
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
        let timeoutText = String(format: "%g", timeout)
        if state.timedOut {
            if state.readySeconds == nil {
                throw RootfsError("the guest did not become ready within \(timeoutText) s", hint: kind == .iso
                    ? "the ISO's kernel command line needs console=ttyS0 (rootfs image --cmdline) and the agent as init; a slow machine may need a longer --timeout"
                    : "is rootfs-agent the guest's init? A slow machine may need a longer --timeout", details: details)
            }
            throw RootfsError("the command did not finish within \(timeoutText) s", hint: "raise --timeout", details: details)
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

    /// Starts the kernel under KVM and waits for its first console byte:
    /// some hosts have a /dev/kvm whose guests hang or abort.
    func probeKVM() async -> (Bool, String) {
        let command = ToolCommand(options.qemu, [
            "-accel", "kvm", "-cpu", "host", "-m", "128", "-nographic", "-no-reboot", "-nic", "none",
            "-monitor", "none", "-serial", "stdio", "-kernel", options.kernel ?? "", "-append", "console=ttyS0 panic=-1",
        ])
        let sawOutput = Flag()
        let limit = options.kvmProbeSeconds
        do {
            let outcome = try await runner.supervise(command, io: .pipes, onOutput: { _ in sawOutput.set() }) { control in
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
            if said.hasPrefix(options.qemu + ": ") { said.removeFirst(options.qemu.count + 2) }
            if let location = try? Regex(#"^\S+\.c:\d+: "#) { said.replace(location, with: "") }  // QEMU's source file and line
            while said.hasSuffix(".") { said.removeLast() }
            return (false, said.isEmpty ? "no guest output within \(String(format: "%g", limit)) s" : said)
        } catch {
            return (false, "\(error)")
        }
    }
}

/// Remembers the KVM probe's verdict until the host reboots.
struct KVMProbeCache {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("rootfs-kvm-probe-\(getuid())").path
    var bootID: String {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    }

    func load() -> (usable: Bool, reason: String)? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 2, !bootID.isEmpty, lines[0] == bootID else { return nil }
        return (lines[1] == "usable", lines.count > 2 ? lines[2] : "")
    }

    func store(usable: Bool, reason: String) {
        try? "\(bootID)\n\(usable ? "usable" : "unusable")\n\(reason)\n".write(toFile: path, atomically: true, encoding: .utf8)
    }
}

/// A thread-safe boolean.
final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

/// Follows the guest console (a file QEMU writes) for the agent's status lines.
final class ConsoleWatcher: @unchecked Sendable {
    struct State {
        var readySeconds: Double?
        var final: AgentProtocol.Status?
        var panicked = false
        var timedOut = false
        var stoppedWhenReady = false
        var tail: [String] = []
        /// The console's last lines up to the kernel's panic message.
        var panicTail: [String] = []
    }

    private let lock = NSLock()
    private let path: String
    private let tailLimit: Int
    private var handle: FileHandle?
    private var partial: [UInt8] = []
    private var state = State()
    private var sawReady = false

    init(path: String, tailLimit: Int) {
        self.path = path
        self.tailLimit = tailLimit
    }

    var snapshot: State { lock.lock(); defer { lock.unlock() }; return state }
    func markReady(after seconds: Double) { lock.lock(); if state.readySeconds == nil { state.readySeconds = seconds }; lock.unlock() }
    func markTimedOut() { lock.lock(); state.timedOut = true; lock.unlock() }
    func markStopped() { lock.lock(); state.stoppedWhenReady = true; lock.unlock() }

    /// Reads what is new and returns the status lines in it.
    func poll() -> [AgentProtocol.Status] {
        lock.lock(); defer { lock.unlock() }
        if handle == nil { handle = FileHandle(forReadingAtPath: path) }
        guard let handle, let data = try? handle.readToEnd(), !data.isEmpty else { return [] }
        partial += data
        var found: [AgentProtocol.Status] = []
        while let newline = partial.firstIndex(of: 0x0a) {
            let line = Self.printable(partial[..<newline])
            partial.removeSubrange(...newline)
            state.tail.append(line)
            if state.tail.count > tailLimit { state.tail.removeFirst(state.tail.count - tailLimit) }
            if line.contains("Kernel panic - not syncing") && !state.panicked {
                // The lines leading to the panic say more than its stack trace.
                state.panicked = true
                state.panicTail = state.tail
            }
            if let status = AgentProtocol.parseStatus(line) {
                switch status {
                case .ready:
                    // The protocol promises one ready line; count the first.
                    if sawReady { continue }
                    sawReady = true
                case .exited, .signaled:
                    state.final = status
                }
                found.append(status)
            }
        }
        return found
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
            if byte >= 0x20 || byte == 0x09 { out.append(byte) }
            index += 1
        }
        return String(decoding: out, as: UTF8.self)
    }
}
