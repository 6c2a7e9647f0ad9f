// rootfs-agent: the reference guest agent. As PID 1 it sets up a minimal
// system; as a service (not PID 1) it only runs the command. Either way it
// announces readiness on the console, runs the command that `rootfs boot`
// put on the kernel command line, reports its exit status and powers off.
// The protocol is in docs/AGENT.md and Sources/AgentProtocol.
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import AgentProtocol
import CAgentSupport

let agentVersion = "0.1.0"
let isInit = getpid() == 1

// Only look at our own flags: as PID 1 the kernel passes unknown parameters as arguments.
if !isInit {
    let flags = commandLineArguments().dropFirst()
    // A stage-1 initrd's device-mapper setup (DeviceMapper.swift): the agent binary is
    // static and already there, so the initrd needs no dmsetup and no libraries.
    if flags.first == "dm-create" { exit(DeviceMapper.main()) }
    // The root partition by its GPT type (GPTRoot.swift): prints its /dev name.
    if flags.first == "gpt-root" { exit(GPTRoot.main()) }
    if flags.contains("--version") || flags.contains("-V") {
        print("rootfs-agent \(agentVersion) (protocol 1)")
        exit(0)
    }
    if flags.contains("--help") || flags.contains("-h") {
        print("""
        usage: rootfs-agent [--version]
        The guest agent of rootfs. Run it as init (PID 1) or from a service unit.
        It reads its command from the kernel command line (\(AgentProtocol.commandParameter)=...),
        prints "\(AgentProtocol.readyLine)" on the console, runs the command and powers off.
        See docs/AGENT.md.
        """)
        exit(0)
    }
}

// MARK: PID 1 duties

func mountFilesystem(_ type: String, on target: String, flags: UInt, options: String = "") {
    makeDirectories(target)
    if isMountPoint(target) { return }
    let result = options.withCString { data in
        mount(type, target, type, flags, data)
    }
    if result != 0 && errno != EBUSY {
        warn("cannot mount \(type) on \(target): \(errorText())")
    }
}

/// Diagnostics go to the console (or stderr before there is one).
nonisolated(unsafe) var consoleFD: Int32 = 2
func warn(_ text: String) {
    writeLine(consoleFD, "rootfs-agent: warning: " + text)
}

func setUpInit() {
    let noSuid = UInt(MS_NOSUID), noDev = UInt(MS_NODEV), noExec = UInt(MS_NOEXEC)
    mountFilesystem("proc", on: "/proc", flags: noSuid | noDev | noExec)
    mountFilesystem("sysfs", on: "/sys", flags: noSuid | noDev | noExec)
    mountFilesystem("devtmpfs", on: "/dev", flags: noSuid, options: "mode=0755")
    mountFilesystem("devpts", on: "/dev/pts", flags: noSuid | noExec, options: "gid=5,mode=0620,ptmxmode=0666")
    mountFilesystem("tmpfs", on: "/dev/shm", flags: noSuid | noDev, options: "mode=1777")
    mountFilesystem("tmpfs", on: "/run", flags: noSuid | noDev, options: "mode=0755")
    mountFilesystem("tmpfs", on: "/tmp", flags: noSuid | noDev, options: "mode=1777")

    // Without /dev/console in the image the kernel starts init with no stdio.
    if fcntl(0, F_GETFD) < 0 || fcntl(1, F_GETFD) < 0 || fcntl(2, F_GETFD) < 0 {
        let fd = open("/dev/console", O_RDWR | O_NOCTTY)
        if fd >= 0 {
            for target: Int32 in 0...2 where fcntl(target, F_GETFD) < 0 { dup2(fd, target) }
            if fd > 2 { close(fd) }
        }
    }
}

func setHostname(_ name: String) {
    if sethostname(name, name.utf8.count) != 0 {
        warn("cannot set hostname \(name): \(errorText())")
    }
}

func bringUpLoopback() {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { return warn("no socket for lo: \(errorText())") }
    defer { close(fd) }
    var request = ifreq()
    withUnsafeMutableBytes(of: &request.ifr_ifrn.ifrn_name) { name in
        for (index, byte) in "lo".utf8.enumerated() { name[index] = byte }
    }
    guard ioctl(fd, UInt(SIOCGIFFLAGS), &request) == 0 else {
        return warn("cannot read flags of lo: \(errorText())")
    }
    request.ifr_ifru.ifru_flags |= Int16(IFF_UP | IFF_RUNNING)
    if ioctl(fd, UInt(SIOCSIFFLAGS), &request) != 0 {
        warn("cannot bring up lo: \(errorText())")
    }
}

/// Loads `rootfs boot`'s modules for its devices (virtio-net...), in the order given.
/// Names only: a name with a path character is refused, the directory is fixed.
func loadModules(_ names: String) {
    for name in names.split(separator: ",") {
        guard AgentProtocol.isModuleName(name) else { warn("not a module name: \(name)"); continue }
        let path = AgentProtocol.modulesDirectory + "/" + String(name) + ".ko"
        let rc = rootfs_agent_load_module(path)
        if rc != 0 { warn("cannot load \(path): \(errorText(-rc))") }
    }
}

/// `rootfs boot --share`: each virtiofs tag mounted on its guest directory (made when missing).
func mountShares(_ encoded: String) {
    guard let words = AgentProtocol.decodeCommandBytes(encoded), words.count % 2 == 0 else {
        return warn("cannot decode \(AgentProtocol.sharesParameter); no share mounted")
    }
    var index = 0
    while index < words.count {
        let tag = String(decoding: words[index], as: UTF8.self), target = String(decoding: words[index + 1], as: UTF8.self)
        index += 2
        makeDirectories(target)
        // The device may appear a moment after virtiofs loads: a few tries.
        var tries = 0
        while mount(tag, target, "virtiofs", 0, nil) != 0 {
            tries += 1
            if tries >= 50 { warn("cannot mount the share \(tag) on \(target): \(errorText())"); break }
            usleep(20_000)
        }
    }
}

/// QEMU's user-mode network: eth0 gets the address its DHCP server would hand out, and the
/// default route goes to its gateway. The card may appear a moment after its module loads.
func configureUserNetwork() {
    var waited = 0
    while !exists("/sys/class/net/eth0") && waited < 100 { usleep(20_000); waited += 1 }
    let rc = rootfs_agent_configure_ipv4("eth0", AgentProtocol.userNetworkAddress, AgentProtocol.userNetworkPrefix,
                                         AgentProtocol.userNetworkGateway)
    if rc != 0 { warn("cannot configure eth0: \(errorText(-rc))") }
}

/// Reaps every exited child; returns the status of `pid` if it was among them.
func reapAll(until pid: pid_t?, blocking: Bool) -> Int32? {
    while true {
        var status: Int32 = 0
        let reaped = waitpid(-1, &status, blocking ? 0 : WNOHANG)
        if reaped < 0 {
            if errno == EINTR { continue }
            return nil  // ECHILD: nobody left
        }
        if reaped == 0 { return nil }
        if let pid, reaped == pid { return status }
    }
}

func powerOff() -> Never {
    if isInit {
        // Give everything left a moment to exit, then stop it.
        // Every user process is ours by now (orphans are reparented to init):
        // once waitpid says ECHILD, nothing is left.
        kill(-1, SIGTERM)
        var waited = 0
        while waited < 50 {
            var status: Int32 = 0
            let reaped = waitpid(-1, &status, WNOHANG)
            if reaped < 0 && errno == ECHILD { break }
            if reaped <= 0 { usleep(20_000); waited += 1 }
        }
        kill(-1, SIGKILL)
        _ = reapAll(until: nil, blocking: false)
        sync()
        rootfs_agent_power_off()
        warn("power off failed: \(errorText())")
        while true { pause() }
    }
    sync()
    // Under systemd, ask it for a clean shutdown; otherwise use the syscall.
    if isDirectory("/run/systemd/system") {
        for candidate in ["/usr/bin/systemctl", "/bin/systemctl"] where access(candidate, X_OK) == 0 {
            if let status = spawnAndWait([candidate, "poweroff", "--no-block"]), case .exited(0) = status {
                exit(0)
            }
        }
    }
    rootfs_agent_power_off()
    warn("power off failed: \(errorText())")
    exit(1)
}

// MARK: Running the command

let searchPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func resolve(_ name: [UInt8]) -> [UInt8]? {
    if name.contains(UInt8(ascii: "/")) { return name }
    for directory in searchPath.split(separator: ":") {
        let candidate = Array(directory.utf8) + [UInt8(ascii: "/")] + name
        let path = String(decoding: candidate, as: UTF8.self)
        if access(path, X_OK) == 0 && !isDirectory(path) { return candidate }
    }
    return nil
}

/// A plain fork/exec with inherited stdio (for systemctl).
func spawnAndWait(_ argv: [String]) -> ChildStatus? {
    let arguments = argv.map { Array($0.utf8) }
    let pid: pid_t = withCStringArray(arguments) { cArgs in
        withCStringArray([]) { cEnv in
            let pid = fork()
            if pid == 0 {
                execve(cArgs[0]!, cArgs, cEnv)
                _exit(127)
            }
            return pid
        }
    }
    guard pid > 0 else { return nil }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 { if errno != EINTR { return nil } }
    return ChildStatus(status)
}

struct CommandIO {
    var input: Int32
    var output: Int32
    var controllingTerminal: Bool
}

/// Runs the command; returns its status (127 when it cannot be found).
func runCommand(_ argv: [[UInt8]], io: CommandIO, term: String) -> ChildStatus {
    let name = String(decoding: argv[0], as: UTF8.self)
    guard let executable = resolve(argv[0]) else {
        writeLine(io.output, "rootfs-agent: \(name): command not found")
        return .exited(127)
    }
    let environment = [
        "PATH=" + searchPath, "HOME=/root", "TERM=" + term, "SHELL=/bin/sh",
        "USER=root", "LOGNAME=root",
    ].map { Array($0.utf8) }
    let directory = isDirectory("/root") ? "/root" : "/"
    let failure = Array("rootfs-agent: cannot run \(name): ".utf8)

    let pid: pid_t = withCStringArray([executable]) { cPath in
        withCStringArray(argv) { cArgs in
            withCStringArray(environment) { cEnv in
                directory.withCString { cDirectory in
                    let pid = fork()
                    if pid == 0 {
                        // Child: only async-signal-safe calls from here on.
                        setsid()
                        if io.controllingTerminal { _ = ioctl(io.input, UInt(TIOCSCTTY), 0) }
                        dup2(io.input, 0)
                        dup2(io.output, 1)
                        dup2(io.output, 2)
                        chdir(cDirectory)
                        execve(cPath[0]!, cArgs, cEnv)
                        let code = errno
                        failure.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
                        let reason = strerror(code)!
                        _ = write(2, reason, strlen(reason))
                        _ = write(2, "\n", 1)
                        _exit(code == ENOENT ? 127 : 126)
                    }
                    return pid
                }
            }
        }
    }
    guard pid > 0 else {
        writeLine(io.output, "rootfs-agent: cannot fork: \(errorText())")
        return .exited(126)
    }
    var status: Int32 = 0
    if isInit {
        // As init, every orphan is ours too: reap them while waiting.
        while true {
            if let found = reapAll(until: pid, blocking: true) { status = found; break }
        }
    } else {
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    }
    return ChildStatus(status)
}

// MARK: Main

// The stage-1 initrd of raw-efi / qcow2-efi (the kernel runs it as /init; /etc/initrd-release
// marks an initrd, as systemd's convention has it, and ID=rootfs-stage1 ours): find the root by
// its GPT type and switch to it. Not argv[0]: the static runtime reads the arguments from
// /proc/self/cmdline, and /proc is not mounted yet.
if isInit && GPTRoot.isStageOneInitrd() { GPTRoot.stageOne() }

if isInit { setUpInit() }
let console = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC)
if console >= 0 { consoleFD = console }

let commandLine = String(decoding: readFile("/proc/cmdline") ?? [], as: UTF8.self)
func parameter(_ name: String) -> String? { AgentProtocol.parameter(name, in: commandLine) }

if isInit {
    setHostname(parameter(AgentProtocol.hostnameParameter) ?? AgentProtocol.defaultHostname)
    bringUpLoopback()
    if let names = parameter(AgentProtocol.modulesParameter) { loadModules(names) }
    if parameter(AgentProtocol.networkParameter) == "user" { configureUserNetwork() }
    if let shares = parameter(AgentProtocol.sharesParameter) { mountShares(shares) }
}

// Where the ready and status lines go: the console, plus an optional extra device.
nonisolated(unsafe) var statusFDs = [consoleFD]
if let device = parameter(AgentProtocol.statusParameter) {
    let fd = openDevice(device)
    if fd >= 0 { makeRaw(fd); statusFDs.append(fd) } else { warn("cannot open \(device): \(errorText())") }
}
func announce(_ status: AgentProtocol.Status) {
    for fd in statusFDs {
        writeLine(fd, AgentProtocol.line(for: status))
        tcdrain(fd)
    }
}

var command: [[UInt8]] = []
if let encoded = parameter(AgentProtocol.commandParameter) {
    if let decoded = AgentProtocol.decodeCommandBytes(encoded) {
        command = decoded
    } else {
        warn("cannot decode \(AgentProtocol.commandParameter); ignoring it")
    }
}

announce(.ready)

if command.isEmpty {
    guard isInit else { exit(0) }
    // Nothing to run: stay up as init, reaping orphans; SIGTERM or SIGPWR powers off.
    for signalNumber in [SIGTERM, SIGPWR, SIGINT] {
        signal(signalNumber) { _ in
            sync()
            rootfs_agent_power_off()
        }
    }
    while true {
        if reapAll(until: nil, blocking: true) == nil { sleep(1) }
    }
}

var io = CommandIO(input: -1, output: consoleFD, controllingTerminal: false)
if let tty = parameter(AgentProtocol.ttyParameter) {
    let fd = openDevice(tty, flags: O_RDWR | O_NOCTTY | O_CLOEXEC)
    if fd >= 0 {
        io = CommandIO(input: fd, output: fd, controllingTerminal: true)
    } else {
        warn("cannot open \(tty): \(errorText())")
    }
} else if let device = parameter(AgentProtocol.outputParameter) {
    let fd = openDevice(device)
    if fd >= 0 {
        makeRaw(fd)
        io.output = fd
    } else {
        warn("cannot open \(device): \(errorText()); using the console")
    }
}
if io.input < 0 { io.input = open("/dev/null", O_RDONLY | O_CLOEXEC) }

let status = runCommand(command, io: io, term: parameter(AgentProtocol.termParameter) ?? "linux")
if isatty(io.output) == 1 { tcdrain(io.output) }
switch status {
case .exited(let code): announce(.exited(code))
case .signaled(let signal): announce(.signaled(signal))
}
powerOff()
