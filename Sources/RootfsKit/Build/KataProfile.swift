import Foundation

/// What the Kata guest profile takes from the caller: Kata's rootfs.sh variables.
public struct KataProfileOptions: Sendable, Equatable {
    /// A tar (Kata ships .tar.zst) holding usr/bin/kata-agent and its units (AGENT_TARBALL).
    public var agentTarball: String?
    /// The OPA policy installed as /etc/kata-opa/default-policy.rego (AGENT_POLICY=yes + AGENT_POLICY_FILE, or AGENT_POLICY=FILE).
    public var agentPolicy: String?
    /// Tarballs unpacked over the tree, in Kata's order.
    public var guestHooksTarball: String?
    public var pauseImageTarball: String?
    public var cocoGuestComponentsTarball: String?
    /// A lib/modules/<kver> directory of the guest's kernel (KERNEL_MODULES_DIR).
    public var kernelModulesDirectory: String?
    /// CONFIDENTIAL_GUEST=yes: /run gets half the memory and the target requires the remount.
    public var confidentialGuest = false
    /// Kata's `rootfs.sh -d` (its Makefile always passes it): the units Kata never needs are deleted.
    public var pruneUnits = true

    public init() {}

    /// Kata's variable names, read from the caller's environment.
    public static func from(environment env: [String: String]) throws -> KataProfileOptions {
        func value(_ key: String) -> String? { env[key].flatMap { $0.isEmpty ? nil : $0 } }
        var options = KataProfileOptions()
        options.agentTarball = value("AGENT_TARBALL")
        options.guestHooksTarball = value("GUEST_HOOKS_TARBALL")
        options.pauseImageTarball = value("PAUSE_IMAGE_TARBALL")
        options.cocoGuestComponentsTarball = value("COCO_GUEST_COMPONENTS_TARBALL")
        options.kernelModulesDirectory = value("KERNEL_MODULES_DIR")
        options.confidentialGuest = value("CONFIDENTIAL_GUEST")?.lowercased() == "yes"
        if let prune = value("KATA_PRUNE_UNITS")?.lowercased() { options.pruneUnits = !["no", "false", "0"].contains(prune) }
        switch value("AGENT_POLICY") {
        case nil, "no":
            break
        case "yes":
            // Kata's default is allow-all.rego from its own source tree, which rootfs does not have.
            guard let file = value("AGENT_POLICY_FILE") else {
                throw RootfsError("AGENT_POLICY=yes needs the policy file: set AGENT_POLICY_FILE",
                                  hint: "AGENT_POLICY_FILE=/path/to/allow-all.rego (Kata's src/kata-opa/allow-all.rego)")
            }
            options.agentPolicy = file
        case let file?:
            options.agentPolicy = file
        }
        return options
    }

    /// Refuses missing inputs before anything runs (a dry run lists them).
    public func validate() throws {
        let tarballs = [("AGENT_TARBALL", agentTarball), ("GUEST_HOOKS_TARBALL", guestHooksTarball),
                        ("PAUSE_IMAGE_TARBALL", pauseImageTarball), ("COCO_GUEST_COMPONENTS_TARBALL", cocoGuestComponentsTarball)]
        for case let (name, path?) in tarballs {
            try KataProfile.requireTar(path, variable: name)
        }
        if let agentPolicy, !FS.isRegularFile(FS.absolute(agentPolicy)) {
            throw RootfsError("the agent policy \(agentPolicy) is not a readable file", hint: "AGENT_POLICY_FILE names a .rego file")
        }
        if let dir = kernelModulesDirectory { _ = try KernelModules(directory: dir) }
    }
}

/// A KERNEL_MODULES_DIR, vetted: a lib/modules/<kver> directory whose modules were built for <kver>.
public struct KernelModules: Sendable, Equatable {
    public var directory: String
    /// The kernel release: the directory's name, as Kata copies it (`cp -a DIR lib/modules/`).
    public var kernelVersion: String

    public init(directory given: String) throws {
        let dir = FS.absolute(given)
        guard FS.isDirectory(dir) else {
            throw RootfsError("KERNEL_MODULES_DIR \(given) is not a directory",
                              hint: "give a kernel's lib/modules/<version> directory (from its package or `make modules_install`)")
        }
        let version = FS.basename(dir)
        guard FS.isRegularFile(dir + "/modules.order") else {
            throw RootfsError("KERNEL_MODULES_DIR \(given) has no modules.order: it is not a kernel's lib/modules/<version> directory",
                              hint: "give the directory named after the kernel release, e.g. .../lib/modules/6.1.0-28-cloud-amd64")
        }
        // The name is what the guest kernel's `uname -r` must be; a module's vermagic says which kernel it was built for.
        guard let first = Self.firstModule(dir) else {
            throw RootfsError("KERNEL_MODULES_DIR \(given): modules.order names no module present in the directory")
        }
        // A compressed module's vermagic is not read here: its release is taken from the directory's name.
        if !Self.isCompressed(first) {
            guard let magic = Self.vermagic(of: dir + "/" + first) else {
                throw RootfsError("KERNEL_MODULES_DIR \(given): \(first) has no vermagic, so it is not a kernel module")
            }
            let built = magic.split(separator: " ").first.map(String.init) ?? magic
            guard built == version else {
                throw RootfsError("KERNEL_MODULES_DIR \(given) is named \(version) but its modules were built for kernel \(built)",
                                  hint: "the directory must be named after the kernel release the modules match (uname -r of the guest kernel)")
            }
        }
        self.directory = dir
        self.kernelVersion = version
    }

    static func firstModule(_ dir: String) -> String? {
        guard let text = try? String(contentsOfFile: dir + "/modules.order", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") {
            let name = line.trimmingCharacters(in: .whitespaces)
            // modules.order names paths inside the directory; anything climbing out is not a module of it.
            if name.isEmpty || name.hasPrefix("/") || name.split(separator: "/").contains("..") { continue }
            if FS.isRegularFile(dir + "/" + name) { return name }
            for ext in [".xz", ".zst", ".gz"] where FS.isRegularFile(dir + "/" + name + ext) { return name + ext }
        }
        return nil
    }

    static func isCompressed(_ name: String) -> Bool { [".xz", ".zst", ".gz"].contains { name.hasSuffix($0) } }

    /// The `vermagic=` string of an uncompressed module's .modinfo section.
    static func vermagic(of path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let key = Array("vermagic=".utf8)
        let bytes = [UInt8](data)
        var i = 0
        while i + key.count < bytes.count {
            if bytes[i] == key[0], Array(bytes[i..<(i + key.count)]) == key, i == 0 || bytes[i - 1] == 0 {
                var end = i + key.count
                while end < bytes.count, bytes[end] != 0 { end += 1 }
                return String(decoding: bytes[(i + key.count)..<end], as: UTF8.self)
            }
            i += 1
        }
        return nil
    }
}

/// Makes a built tree a guest Kata's runtime can run, as Kata's rootfs.sh and
/// image_builder.sh leave it: Kata's target and agent unit, tmp.mount, the
/// empty resolv.conf and machine-id, chrony on the PTP clock, var/tmp, the
/// pruned units, the kernel modules, the policy and the tarballs. Every guest
/// path goes through GuestTree: a link in the tree never leads to the host.
public struct KataProfile: Sendable {
    public var tree: GuestTree
    public var options: KataProfileOptions
    public var runner = ProcessRunner()

    public init(tree: GuestTree, options: KataProfileOptions) {
        self.tree = tree
        self.options = options
    }

    public static let targetName = "kata-containers.target"
    static let unitDirectory = "/usr/lib/systemd/system"
    /// Kata's `systemd_units` (each as .service and .socket) and `systemd_files`, deleted with `rootfs.sh -d`.
    public static let prunedUnits = [
        "systemd-coredump@", "systemd-journald", "systemd-journald-dev-log", "systemd-journal-flush",
        "systemd-random-seed", "systemd-timesyncd", "systemd-tmpfiles-setup", "systemd-udevd",
        "systemd-udevd-control", "systemd-udevd-kernel", "systemd-udev-trigger", "systemd-update-utmp",
    ]
    public static let prunedFiles = [
        "systemd-bless-boot-generator", "systemd-fstab-generator", "systemd-getty-generator",
        "systemd-gpt-auto-generator", "systemd-tmpfiles-cleanup.timer",
    ]
    /// The kernel parameters Kata's runtime boots every systemd guest with.
    public static let kernelParameters = [
        "systemd.unit=\(targetName)", "systemd.mask=systemd-networkd.service", "systemd.mask=systemd-networkd.socket",
    ]

    var installer: AgentInstaller { AgentInstaller(tree: tree) }

    /// Installs the agent and everything around it; returns one line per step, for the log.
    @discardableResult
    public func install(agent: AgentSpec) async throws -> [String] {
        var notes: [String] = []
        try linkVarTmp()
        notes.append("var/tmp -> ../tmp")
        if !agent.isInit, try installTmpMount() { notes.append("tmp.mount installed in /etc/systemd/system") }
        if let dir = options.kernelModulesDirectory {
            let modules = try KernelModules(directory: dir)
            try await installModules(modules)
            notes.append("kernel modules \(modules.kernelVersion) installed, depmod run for it")
        }
        if try configureChrony() { notes.append("chrony: refclock PHC /dev/ptp0") }
        try installAgent(agent)
        notes.append(options.agentTarball.map { "agent and units from AGENT_TARBALL \($0)" } ?? "agent \(agent.guestPath)")
        if !agent.isInit {
            try installUnits(agent)
            notes.append("\(Self.targetName) (wanted by basic.target, the default target)")
        }
        if let policy = options.agentPolicy {
            try installPolicy(policy)
            notes.append("policy \(policy) -> /etc/kata-opa/default-policy.rego")
        }
        for case let (name, path?) in [("GUEST_HOOKS_TARBALL", options.guestHooksTarball),
                                       ("PAUSE_IMAGE_TARBALL", options.pauseImageTarball),
                                       ("COCO_GUEST_COMPONENTS_TARBALL", options.cocoGuestComponentsTarball)] {
            try unpack(path, variable: name)
            notes.append("\(name) \(path) unpacked")
        }
        try emptyFile("/etc/resolv.conf")
        try emptyFile("/etc/machine-id")
        notes.append("empty /etc/resolv.conf and /etc/machine-id")
        if options.pruneUnits {
            let removed = try pruneUnits()
            notes.append("pruned \(removed.count) systemd units and files Kata never needs")
        }
        return notes
    }

    // MARK: the steps

    /// Kata links var/tmp to ../tmp so systemd's private temporary directories land on tmp.mount.
    /// (Kata also deletes var/cache, var/lib and var/log; rootfs keeps them: the package database is in var/lib.)
    func linkVarTmp() throws {
        switch tree.resolve("/var/tmp", followLast: false) {
        case .found(let host, _):
            var st = stat()
            if lstat(host, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR { FS.remove(host) }
        default: break
        }
        try installer.symlink(guestPath: "/var/tmp", target: "../tmp")
    }

    /// Kata's target requires tmp.mount; some distros do not install it in a systemd path.
    func installTmpMount() throws -> Bool {
        for path in ["/etc/systemd/system/tmp.mount", "/usr/lib/systemd/system/tmp.mount", "/lib/systemd/system/tmp.mount"] {
            if readGuestFile(path) != nil { return false }
        }
        let text = readGuestFile("/usr/share/systemd/tmp.mount") ?? Array("""
        [Unit]
        Description=Temporary Directory /tmp
        ConditionPathIsSymbolicLink=!/tmp
        DefaultDependencies=no
        Conflicts=umount.target
        Before=local-fs.target umount.target
        After=swap.target

        [Mount]
        What=tmpfs
        Where=/tmp
        Type=tmpfs
        Options=mode=1777,strictatime,nosuid,nodev

        """.utf8)
        try installer.writeFile("/etc/systemd/system/tmp.mount", contents: text, mode: 0o644)
        return true
    }

    /// The modules are copied first into a staging directory of our own (plain directories, no links),
    /// depmod runs there, and the result is laid into the tree by the overlay code: depmod never sees
    /// the guest tree, so no link in it can lead depmod to the host.
    func installModules(_ modules: KernelModules) async throws {
        let staging = try FS.makeSiblingTemporaryDirectory(for: tree.root + "-modules")
        defer { FS.remove(staging) }
        let stagedGuest = "/lib/modules/" + modules.kernelVersion
        try OverlayApplier(tree: GuestTree(root: staging)).apply(.file(guestPath: Array(stagedGuest.utf8), hostPath: modules.directory))
        guard let depmod = ProcessRunner.which("depmod") ?? ["/usr/sbin/depmod", "/sbin/depmod"].first(where: FS.isRegularFile) else {
            throw RootfsError("KERNEL_MODULES_DIR needs depmod on this host", hint: "apt-get install kmod")
        }
        do {
            try await runner.capture(ToolCommand(depmod, ["-b", staging, modules.kernelVersion]))
        } catch let failure as ToolFailure {
            throw RootfsError("depmod failed for the kernel modules of \(modules.kernelVersion)", hint: "\(failure)")
        }
        try OverlayApplier(tree: tree).apply(.file(guestPath: Array(stagedGuest.utf8), hostPath: staging + stagedGuest))
    }

    /// Points chrony at the PTP clock the hypervisor provides, as Kata does; nothing when chrony is absent.
    func configureChrony() throws -> Bool {
        guard let confPath = ["/etc/chrony/chrony.conf", "/etc/chrony.conf"].first(where: { readGuestFile($0) != nil }),
              let conf = readGuestFile(confPath) else { return false }
        var lines = String(decoding: conf, as: UTF8.self).components(separatedBy: "\n")
        // No network time sources: the guest follows the host's clock only.
        lines = lines.map { line in
            ["server ", "pool ", "peer "].contains(where: { line.hasPrefix($0) }) ? "# " + line : line
        }
        if lines.last == "" { lines.removeLast() }
        lines += ["refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0",
                  "# Step the clock when it is more than a second off, at any time.",
                  "makestep 1 -1", ""]
        try installer.writeFile(confPath, contents: Array(lines.joined(separator: "\n").utf8), mode: 0o644)
        for unit in ["/usr/lib/systemd/system/chrony.service", "/usr/lib/systemd/system/chronyd.service",
                     "/lib/systemd/system/chrony.service"] {
            guard let text = readGuestFile(unit) else { continue }
            var out: [String] = []
            for line in String(decoding: text, as: UTF8.self).components(separatedBy: "\n") {
                var line = line
                // The chrony user may not exist in a minimal guest.
                if line.hasPrefix("ExecStart="), let range = line.range(of: #" -u [A-Za-z0-9_]+"#, options: .regularExpression) {
                    line.removeSubrange(range)
                }
                if line.hasPrefix("ReadWritePaths=") { line = line.replacingOccurrences(of: " /var/lib/chrony", with: " -/var/lib/chrony") }
                if line.hasPrefix("StateDirectory=") || line.hasPrefix("LogsDirectory=") { line = "#" + line }
                out.append(line)
                if line == "[Unit]" { out.append("ConditionPathExists=/dev/ptp0") }
            }
            try installer.writeFile(unit, contents: Array(out.joined(separator: "\n").utf8), mode: 0o644)
            break
        }
        return true
    }

    func installAgent(_ agent: AgentSpec) throws {
        if let tarball = options.agentTarball {
            try unpack(tarball, variable: "AGENT_TARBALL")
            guard case .found(let host, _) = tree.resolve(agent.guestPath), FS.isRegularFile(host), access(host, X_OK) == 0 else {
                throw RootfsError("AGENT_TARBALL \(tarball) has no executable \(agent.guestPath.dropFirst())",
                                  hint: "Kata's agent tarball holds usr/bin/kata-agent and its units; AGENT_BIN names the binary")
            }
        } else {
            try installer.writeFile(agent.guestPath, contentsOf: agent.sourcePath, mode: 0o755)
        }
        if agent.isInit { try installer.symlink(guestPath: "/sbin/init", target: agent.guestPath) }
    }

    /// Kata's target and agent unit (their semantics, our text), unless the agent tarball brought its own.
    func installUnits(_ agent: AgentSpec) throws {
        let unitPath = "\(Self.unitDirectory)/\(agent.guestName).service"
        let targetPath = "\(Self.unitDirectory)/\(Self.targetName)"
        let fromTarball = options.agentTarball != nil
        if !(fromTarball && readGuestFile(unitPath) != nil) {
            let unit = """
            [Unit]
            Description=Kata Containers agent (\(agent.guestName))
            Wants=\(Self.targetName)

            [Service]
            Type=simple
            ExecStart=\(agent.guestPath)
            # The runtime reads the agent's logs from the console.
            StandardOutput=tty
            LimitNOFILE=1073741824
            # A guest whose agent died is of no use: stop the VM so the runtime notices.
            ExecStop=/bin/sync ; /usr/bin/systemctl --force poweroff
            FailureAction=poweroff
            # The OOM killer takes a container's process before the agent.
            OOMScoreAdjust=-997

            """
            try installer.writeFile(unitPath, contents: Array(unit.utf8), mode: 0o644)
        }
        if !(fromTarball && readGuestFile(targetPath) != nil) {
            let target = """
            [Unit]
            Description=Kata Containers agent target
            Requires=basic.target
            Requires=tmp.mount
            Wants=chronyd.service
            Requires=\(agent.guestName).service
            Conflicts=rescue.service rescue.target
            After=basic.target rescue.service rescue.target
            AllowIsolate=yes

            """
            try installer.writeFile(targetPath, contents: Array(target.utf8), mode: 0o644)
        }
        if options.confidentialGuest {
            // Kata: systemd gives /run 10% of the memory, too little for confidential guests.
            var fstab = readGuestFile("/etc/fstab").map { String(decoding: $0, as: UTF8.self) } ?? ""
            fstab = fstab.components(separatedBy: "\n").filter { !$0.contains("/run") && !$0.isEmpty }.map { $0 + "\n" }.joined()
            fstab += "tmpfs /run tmpfs nodev,nosuid,size=50% 0 0\n"
            try installer.writeFile("/etc/fstab", contents: Array(fstab.utf8), mode: 0o644)
            var text = String(decoding: readGuestFile(targetPath) ?? [], as: UTF8.self)
            if !text.contains("Requires=systemd-remount-fs.service") {
                if !text.hasSuffix("\n") { text += "\n" }
                text += "Requires=systemd-remount-fs.service\n"
                try installer.writeFile(targetPath, contents: Array(text.utf8), mode: 0o644)
            }
        }
        // Kata: basic.target wants the target (and the target dbus.socket); Kata's runtime also names it
        // with systemd.unit=. rootfs makes it the default target too, so a plain `rootfs boot` starts the agent.
        try installer.symlink(guestPath: "/etc/systemd/system/basic.target.wants/\(Self.targetName)", target: targetPath)
        if readGuestFile("\(Self.unitDirectory)/dbus.socket") != nil {
            try installer.symlink(guestPath: "/etc/systemd/system/\(Self.targetName).wants/dbus.socket",
                                  target: "\(Self.unitDirectory)/dbus.socket")
        }
        try installer.symlink(guestPath: "/etc/systemd/system/default.target", target: targetPath)
    }

    /// Kata installs the file under its own name and links default-policy.rego to it.
    func installPolicy(_ policy: String) throws {
        let name = FS.basename(policy)
        guard !name.isEmpty, name != "default-policy.rego" else {
            try installer.writeFile("/etc/kata-opa/default-policy.rego", contentsOf: FS.absolute(policy), mode: 0o644)
            return
        }
        try installer.writeFile("/etc/kata-opa/" + name, contentsOf: FS.absolute(policy), mode: 0o644)
        try installer.symlink(guestPath: "/etc/kata-opa/default-policy.rego", target: name)
    }

    /// Kata runs `tar -x` into the tree; rootfs lays the archive over it with the overlay code, which resolves
    /// every destination inside the tree.
    func unpack(_ path: String, variable: String) throws {
        try Self.requireTar(path, variable: variable)
        try OverlayApplier(tree: tree).applyArchive(FS.absolute(path), label: variable)
    }

    /// A link is replaced (the agent bind-mounts the container's file over it); a regular file is emptied.
    func emptyFile(_ guestPath: String) throws {
        try installer.writeFile(guestPath, contents: [], mode: 0o644)
    }

    /// Kata's `find ROOTFS -name UNIT.service -o -name UNIT.socket -delete`, without following links.
    func pruneUnits() throws -> [String] {
        let names = Set(Self.prunedUnits.flatMap { [$0 + ".service", $0 + ".socket"] } + Self.prunedFiles)
        var doomed: [[UInt8]] = []
        try TreeWalker(root: tree.root).walk { entry in
            guard entry.fileType == S_IFREG || entry.fileType == S_IFLNK else { return }
            let name = entry.path.split(separator: UInt8(ascii: "/")).last.map(Array.init) ?? entry.path
            if names.contains(String(decoding: name, as: UTF8.self)) { doomed.append(entry.path) }
        }
        for path in doomed {
            // The walker never followed a link, so every parent on this path is a real directory of the tree.
            let host = Array(tree.root.utf8) + [UInt8(ascii: "/")] + path + [0]
            let rc = host.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { unlink($0.baseAddress!) } }
            guard rc == 0 else {
                throw RootfsError("cannot delete \(String(decoding: path, as: UTF8.self)) in the rootfs: \(FS.errnoText())")
            }
        }
        return doomed.map { "/" + String(decoding: $0, as: UTF8.self) }
    }

    // MARK: helpers

    /// A regular file's bytes, the path resolved inside the tree; nil when missing or not a regular file.
    func readGuestFile(_ guestPath: String) -> [UInt8]? {
        guard case .found(let host, _) = tree.resolve(guestPath) else { return nil }
        let fd = open(host, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return bytes
    }

    /// A missing file or one that is not a tar archive is a clear error, named by its variable.
    static func requireTar(_ path: String, variable: String) throws {
        let absolute = FS.absolute(path)
        guard FS.isRegularFile(absolute) else {
            throw RootfsError("\(variable) \(path): no such file", hint: "give the path of a tar archive (Kata ships .tar.zst)")
        }
        do {
            var entries = 0
            try TreeSource.archive(absolute).walk { _ in entries += 1 }
            guard entries > 0 else { throw RootfsError("empty") }
        } catch {
            throw RootfsError("\(variable) \(path) is not a tar archive", hint: "give a tar archive (.tar, .tar.gz, .tar.zst) of files to lay over the rootfs")
        }
    }
}

/// Which guest a build makes: the distro tree alone (ROOTFS_ONLY), a Kata guest, or rootfs's own guest.
public struct GuestProfileChoice: Sendable, Equatable {
    /// The Kata profile's inputs; nil: rootfs's own rootfs-guest.target.
    public var kata: KataProfileOptions?
    /// `--rootfs-only` / ROOTFS_ONLY=yes: no agent, no init, no checks (Kata's extension images).
    public var rootfsOnly = false

    static func isYes(_ value: String?) -> Bool { ["yes", "true", "1"].contains((value ?? "").lowercased()) }

    /// `kata`: `--kata` given (true) or not (nil: on whenever the agent is Kata's).
    public static func decide(kata: Bool?, rootfsOnly: Bool, agentPath: String?, agentInitFlag: Bool, agentInit: Bool,
                              environment env: [String: String]) throws -> GuestProfileChoice {
        func value(_ key: String) -> String? { env[key].flatMap { $0.isEmpty ? nil : $0 } }
        let tarball = value("AGENT_TARBALL")
        if rootfsOnly || isYes(value("ROOTFS_ONLY")) {
            var given: [String] = []
            if kata == true { given.append("--kata") }
            if agentPath != nil { given.append("--agent") }
            if agentInitFlag { given.append("--agent-init") }
            if tarball != nil { given.append("AGENT_TARBALL") }
            guard given.isEmpty else {
                throw RootfsError("--rootfs-only (ROOTFS_ONLY=yes) builds the distro tree with no agent and no init; \(given.joined(separator: ", ")) installs one",
                                  hint: "drop \(given.joined(separator: " and ")), or drop --rootfs-only / ROOTFS_ONLY")
            }
            return GuestProfileChoice(kata: nil, rootfsOnly: true)
        }
        if tarball != nil, agentPath != nil || value("AGENT_SOURCE_BIN") != nil {
            throw RootfsError("AGENT_TARBALL and \(agentPath != nil ? "--agent" : "AGENT_SOURCE_BIN") both give the agent (Kata: never together)",
                              hint: "use one: the tarball (the agent with its units) or the binary")
        }
        if kata == true && agentInit {
            throw RootfsError("--kata conflicts with \(agentInitFlag ? "--agent-init" : "AGENT_INIT=yes / INIT_PROCESS=agent"): the Kata profile starts the agent as a systemd service from kata-containers.target (Kata's runtime boots with systemd.unit=kata-containers.target), while the agent as /sbin/init means no systemd and no units",
                              hint: "drop --agent-init for a systemd Kata guest, or drop --kata for an agent-as-init guest")
        }
        let kataAgent = agentPath != nil || value("AGENT_SOURCE_BIN") != nil || tarball != nil || value("AGENT_BIN") == "kata-agent"
        guard kata == true || (kata == nil && kataAgent) else { return GuestProfileChoice() }
        return GuestProfileChoice(kata: try KataProfileOptions.from(environment: env), rootfsOnly: false)
    }
}

extension GuestProfileChoice {
    /// The agent this profile installs: none (ROOTFS_ONLY), the one in AGENT_TARBALL, or the binary
    /// (`--agent`, AGENT_SOURCE_BIN, the reference agent; under the Kata profile it is named kata-agent).
    public func agent(agentPath: String?, agentInit: Bool, architecture: Architecture? = Architecture.host,
                      environment env: [String: String]) throws -> AgentSpec {
        let named = env["AGENT_BIN"].flatMap { $0.isEmpty ? nil : $0 }
        if rootfsOnly {
            return AgentSpec(sourcePath: "", guestName: "", isInit: false, isReferenceAgent: false)
        }
        if let tarball = kata?.agentTarball {
            return AgentSpec(sourcePath: FS.absolute(tarball), guestName: named ?? "kata-agent", isInit: agentInit, isReferenceAgent: false)
        }
        var agent = try AgentSpec.resolve(agentPath: agentPath, agentInit: agentInit, architecture: architecture, environment: env)
        // The reference agent is the stand-in for kata-agent: same name, same units.
        if kata != nil && agent.isReferenceAgent && named == nil { agent.guestName = "kata-agent" }
        return agent
    }

    /// Installs the agent and its init as the profile says; returns the agent's SHA-256 ("" without one).
    func install(_ agent: AgentSpec, tree: GuestTree, console: Console) async throws -> String {
        if rootfsOnly {
            console.phase("rootfs only: no agent, no init, no checks (ROOTFS_ONLY)")
            return ""
        }
        guard let kata else {
            console.phase("agent: \(agent.guestPath)\(agent.isInit ? " as /sbin/init" : " started by systemd")")
            try AgentInstaller(tree: tree).install(agent)
            return try SHA256.hexDigest(ofFile: agent.sourcePath)
        }
        console.phase("kata profile: \(agent.guestPath)\(agent.isInit ? " as /sbin/init" : " started by \(KataProfile.targetName)")")
        for note in try await KataProfile(tree: tree, options: kata).install(agent: agent) { console.detail(note) }
        // The digest of what the guest runs (from the tarball, the binary inside it).
        guard case .found(let host, _) = tree.resolve(agent.guestPath) else { return "" }
        return try SHA256.hexDigest(ofFile: host)
    }
}

extension GuestProfileChoice {
    /// Kata's osbuilder.yaml keys, on top of rootfs's record.
    func complete(_ record: inout BuildRecord, agent: AgentSpec, environment env: [String: String]) {
        let value = { (key: String) in ProcessInfo.processInfo.environment[key].flatMap { $0.isEmpty ? nil : $0 } ?? env[key].flatMap { $0.isEmpty ? nil : $0 } }
        record.osbuilderVersion = value("OSBUILDER_VERSION")
        record.agentName = agent.guestName
        record.agentVersion = value("AGENT_VERSION") ?? "unknown"
        record.agentRepository = value("KATA_REPO") ?? ""
    }
}
