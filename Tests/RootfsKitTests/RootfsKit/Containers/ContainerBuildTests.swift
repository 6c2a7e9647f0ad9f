import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Real container builds: the base image is made with `rootfs builder seed` (no
/// registry is needed), the builder image from distros/debian/Dockerfile.in, and
/// the hook runs mmdebstrap inside the container.
actor ContainerTrees {
    static let shared = ContainerTrees()

    private var seeded: [ContainerEngine.Kind: Task<Void, any Error>] = [:]
    private var built: [ContainerEngine.Kind: Task<DebianTrees.Tree, any Error>] = [:]

    /// debian:trixie in the engine's store, seeded from a host build when missing.
    func seedBaseImage(_ kind: ContainerEngine.Kind) async throws {
        if let task = seeded[kind] { return try await task.value }
        let task = Task<Void, any Error> {
            let scratch = try Fixtures.temporaryDirectory("seed-\(kind.rawValue)")
            defer { FS.remove(scratch) }
            let r = try await Fixtures.rootfs(["builder", "seed", "debian", "--engine", kind.rawValue, "--if-missing",
                                               "--build-dir", scratch])
            guard r.status == 0 else { throw RootfsError("seeding debian for \(kind.rawValue) failed: \(r.stderr.suffix(3000))") }
        }
        seeded[kind] = task
        return try await task.value
    }

    /// The same build as `Fixtures.debian.tree(agentInit: true)`, with the hook in a container.
    func tree(_ kind: ContainerEngine.Kind) async throws -> DebianTrees.Tree {
        if let task = built[kind] { return try await task.value }
        let task = Task<DebianTrees.Tree, any Error> {
            try await self.seedBaseImage(kind)
            let dir = try Fixtures.temporaryDirectory("debian-\(kind.rawValue)")
            let args = ["build", "debian", "--\(kind.rawValue)", "-r", dir + "/rootfs", "--initrd", dir + "/debian.initrd",
                        "--image", dir + "/debian.img", "--compression", "gzip", "--agent-init"]
            let r = try await Fixtures.rootfs(args, environment: ["SOURCE_DATE_EPOCH": "1700000000"], workingDirectory: dir)
            guard r.status == 0 else { throw RootfsError("\(kind.rawValue) build failed (\(r.status)): \(r.stderr.suffix(3000))") }
            guard r.stderr.contains("in \(kind.rawValue) (builder image rootfs-builder-debian:trixie-") else {
                throw RootfsError("the build did not run in \(kind.rawValue): \(r.stderr.suffix(2000))")
            }
            return DebianTrees.Tree(directory: dir + "/rootfs", initrd: dir + "/debian.initrd", image: dir + "/debian.img")
        }
        built[kind] = task
        return try await task.value
    }
}

/// What the comparison looks at: type and permission bits, owner, group, link target.
struct TreeShape: Equatable {
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var link: String?
}

enum TreeCompare {
    static func shapes(_ root: String) throws -> [String: TreeShape] {
        var out: [String: TreeShape] = [:]
        try TreeWalker(root: root).walk { e in
            out[String(decoding: e.path, as: UTF8.self)] = TreeShape(
                mode: UInt32(e.stat.st_mode), uid: e.stat.st_uid, gid: e.stat.st_gid,
                link: e.linkTarget.map { String(decoding: $0, as: UTF8.self) })
        }
        return out
    }

    /// Differences that come from the host's mmdebstrap (Debian 12: 1.3) and the builder
    /// image's (trixie: 1.5) being different versions, not from the container: 1.3 writes
    /// etc/hostname and etc/resolv.conf 0755, 1.5 leaves apt's partial directories to _apt.
    static let toolVersionDifferences: Set<String> = [
        "etc/hostname", "etc/resolv.conf", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
    ]

    /// Human-readable differences between two trees (empty when they match).
    static func differences(host: [String: TreeShape], container: [String: TreeShape]) -> [String] {
        var out: [String] = []
        for path in Set(host.keys).subtracting(container.keys).sorted() { out.append("only in the host build: \(path)") }
        for path in Set(container.keys).subtracting(host.keys).sorted() { out.append("only in the container build: \(path)") }
        for path in Set(host.keys).intersection(container.keys).sorted() {
            let (h, c) = (host[path]!, container[path]!)
            if h == c { continue }
            if toolVersionDifferences.contains(path), h.mode & UInt32(S_IFMT) == c.mode & UInt32(S_IFMT), h.link == c.link {
                continue
            }
            out.append("\(path): host \(String(h.mode, radix: 8)) \(h.uid):\(h.gid) \(h.link ?? "") "
                       + "container \(String(c.mode, radix: 8)) \(c.uid):\(c.gid) \(c.link ?? "")")
        }
        return out
    }

    /// Owners and groups named in the tree's own /etc/passwd and /etc/group.
    static func guestIDs(_ root: String, file: String) throws -> Set<UInt32> {
        let text = try String(contentsOfFile: root + "/etc/" + file, encoding: .utf8)
        return Set(text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            return f.count > 2 ? UInt32(f[2]) : nil
        })
    }

    /// Checks the tree against the host build and that every owner is one the guest knows.
    static func checkAgainstHostBuild(_ tree: DebianTrees.Tree) async throws {
        let host = try await Fixtures.debian.tree(agentInit: true)
        let hostShapes = try shapes(host.directory)
        let shapes = try shapes(tree.directory)
        #expect(shapes.count > 1000)
        let diffs = differences(host: hostShapes, container: shapes)
        #expect(diffs.isEmpty, "\(diffs.count) differences: \(diffs.prefix(20).joined(separator: "\n"))")

        // What the package manager set, exactly.
        let shadow = try #require(shapes["etc/shadow"])
        let shadowGID = try #require(try groupID("shadow", in: tree.directory))
        #expect(shadow.uid == 0 && shadow.gid == shadowGID && shadow.mode & 0o7777 == 0o640)
        #expect(try #require(shapes["usr/bin/passwd"]).mode & 0o7777 == 0o4755)
        #expect(try #require(shapes["usr/bin/su"]).mode & 0o7777 == 0o4755)

        // Nobody unexpected: every owner is root or an account of the guest (no remapped IDs).
        let uids = try guestIDs(tree.directory, file: "passwd"), gids = try guestIDs(tree.directory, file: "group")
        let strangers = shapes.filter { !uids.contains($0.value.uid) || !gids.contains($0.value.gid) }
        #expect(strangers.isEmpty, "owned by IDs the guest does not know: \(strangers.keys.sorted().prefix(10))")
    }

    static func groupID(_ name: String, in root: String) throws -> UInt32? {
        let text = try String(contentsOfFile: root + "/etc/group", encoding: .utf8)
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            if f.count > 2, f[0] == name { return UInt32(f[2]) }
        }
        return nil
    }

    /// Every file of the build directory outside the rootfs belongs to the user running the build.
    static func checkBuildDirectoryOwnership(_ dir: String, skipping rootfs: String) throws {
        var foreign: [String] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) where dir + "/" + name != rootfs {
            guard FS.isDirectory(dir + "/" + name) else {
                var st = stat()
                lstat(dir + "/" + name, &st)
                if st.st_uid != getuid() || st.st_gid != getgid() { foreign.append(name) }
                continue
            }
            try TreeWalker(root: dir + "/" + name).walk { e in
                if e.stat.st_uid != getuid() || e.stat.st_gid != getgid() {
                    foreign.append(name + "/" + String(decoding: e.path, as: UTF8.self))
                }
            }
        }
        #expect(foreign.isEmpty, "not owned by the builder: \(foreign.prefix(10))")
    }
}

func runEngine(_ kind: ContainerEngine.Kind, _ args: [String]) async throws -> String {
    try await ProcessRunner().capture(ToolCommand(kind.rawValue, args)).standardOutput
}

/// A distros directory holding one small distro built FROM the seeded debian image.
func makeDistro(named name: String, dockerfile: String, library: String) throws -> String {
    let root = try Fixtures.temporaryDirectory("distros")
    let dir = root + "/" + name
    try FS.makeDirectories(dir)
    try """
    OS_NAME=debian
    OS_VERSION=${OS_VERSION:-trixie}
    PACKAGES=""
    INIT_PROCESS=agent
    HOST_TOOLS="bash"
    """.write(toFile: dir + "/config.sh", atomically: true, encoding: .utf8)
    try library.write(toFile: dir + "/rootfs_lib.sh", atomically: true, encoding: .utf8)
    try dockerfile.write(toFile: dir + "/Dockerfile.in", atomically: true, encoding: .utf8)
    return root
}

@Suite(.requires(.root, .network, .docker), .tags(.root, .network, .docker)) struct ContainerBuildTestsRequiringDocker {
    @Test func dockerBuildWritesInitrdAndImageAndMatchesAHostBuild() async throws {
        let tree = try await ContainerTrees.shared.tree(.docker)
        for output in [tree.initrd, tree.image] {
            let size = try #require(try FileManager.default.attributesOfItem(atPath: output)[.size] as? Int)
            #expect(size > 10 << 20, "\(output) is \(size) bytes")
        }
        // The initrd carries the ownership too.
        let entries = try ArchiveReader.list(tree.initrd)
        let shadow = try #require(entries.first { $0.path == "etc/shadow" || $0.path == "./etc/shadow" })
        #expect(shadow.uid == 0 && shadow.mode & 0o7777 == 0o640 && shadow.gid != 0)
        try await TreeCompare.checkAgainstHostBuild(tree)
        try TreeCompare.checkBuildDirectoryOwnership(FS.parent(tree.directory), skipping: tree.directory)
    }

    /// USE_DOCKER (which wins over USE_PODMAN), an extra package, and a PATH that holds
    /// nothing but the docker client and bash: the host needs no bootstrap tool.
    @Test func extraPackageThroughDockerWithNothingButTheEngineOnPath() async throws {
        try await ContainerTrees.shared.seedBaseImage(.docker)
        let dir = try Fixtures.temporaryDirectory("docker-extra")
        defer { FS.remove(dir) }
        let bin = dir + "/bin"
        try FS.makeDirectories(bin)
        for tool in ["docker", "bash"] {
            let path = try #require(ProcessRunner.which(tool))
            try FileManager.default.createSymbolicLink(atPath: bin + "/" + tool, withDestinationPath: path)
        }
        #expect(ProcessRunner.which("mmdebstrap", path: bin) == nil && ProcessRunner.which("debootstrap", path: bin) == nil)
        let env = ["PATH": bin, "USE_DOCKER": "true", "USE_PODMAN": "true"]

        // Without an engine the host build is refused with the flag that works.
        let refused = try await Fixtures.rootfs(["build", "debian", "-r", dir + "/refused"], environment: env.filter { !$0.key.hasPrefix("USE_") }, workingDirectory: dir)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("needs mmdebstrap or debootstrap on this host"))
        #expect(refused.stderr.contains("add --docker"))

        let r = try await Fixtures.rootfs(["build", "debian", "--agent-init", "--extra-pkg", "less",
                                           "-r", dir + "/rootfs", "--initrd", dir + "/debian.initrd"],
                                          environment: env, workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        #expect(r.stderr.contains("in docker (builder image"))
        let status = try String(contentsOfFile: dir + "/rootfs/var/lib/dpkg/status", encoding: .utf8)
        #expect(status.contains("Package: less\nStatus: install ok installed\n"))
        #expect(FS.isRegularFile(dir + "/rootfs/usr/bin/less"))
        #expect(FS.isRegularFile(dir + "/debian.initrd"))
    }

    @Test func autoEngineIsTheHostWhenItHasTheToolsElseDocker() async throws {
        let dir = try Fixtures.temporaryDirectory("auto")
        defer { FS.remove(dir) }
        let bin = dir + "/bin"
        try FS.makeDirectories(bin)
        for tool in ["docker", "bash"] {
            try FileManager.default.createSymbolicLink(atPath: bin + "/" + tool, withDestinationPath: try #require(ProcessRunner.which(tool)))
        }
        let args = ["build", "debian", "--engine", "auto", "--dry-run", "-r", dir + "/rootfs"]
        let host = try await Fixtures.rootfs(args, workingDirectory: dir)
        #expect(host.status == 0 && host.stdout.contains("engine: host\n"), "\(host.stderr)")
        let docker = try await Fixtures.rootfs(args, environment: ["PATH": bin], workingDirectory: dir)
        #expect(docker.status == 0, "\(docker.stderr)")
        #expect(docker.stdout.contains("engine: docker (builder image rootfs-builder-debian:trixie-"))
        #expect(docker.stdout.contains("--cap-add SYS_ADMIN"))
        #expect(!docker.stdout.contains("--privileged"))
    }

    @Test func builderSeedImportsAHostBuiltRootfs() async throws {
        let dir = try Fixtures.temporaryDirectory("seed")
        defer { FS.remove(dir) }
        let tag = "rootfs-test-seed:\(getpid())"
        let r = try await Fixtures.rootfs(["builder", "seed", "debian", "--engine", "docker", "--tag", tag,
                                           "--package", "less", "--build-dir", dir])
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        #expect(r.stdout.contains("docker image: \(tag)  sha256:"))
        let os = try await runEngine(.docker, ["run", "--rm", "--network", "none", tag, "/bin/sh", "-c",
                                               ". /etc/os-release; echo $VERSION_CODENAME; stat -c %U:%G:%a /etc/shadow; dpkg-query -W -f '${Status}' less"])
        _ = try? await runEngine(.docker, ["rmi", tag])
        #expect(os == "trixie\nroot:shadow:640\ninstall ok installed")
        // Only the log is left in the scratch directory.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["seed.log"])
        let again = try await Fixtures.rootfs(["builder", "seed", "debian", "--engine", "docker", "--if-missing",
                                               "--build-dir", dir])
        #expect(again.status == 0 && again.stdout.contains("debian:trixie") && again.stdout.contains("already present"))
    }

    @Test func hookFailureInTheContainerIsReportedAsOnTheHost() async throws {
        try await ContainerTrees.shared.seedBaseImage(.docker)
        let distros = try makeDistro(named: "failing", dockerfile: "FROM debian:@OS_VERSION@\n", library: """
            build_rootfs() {
                info "building into $1"
                echo "the hook broke on purpose" >&2
                return 7
            }
            """)
        defer { FS.remove(distros) }
        var reports: [String] = []
        var imageLines: [String] = []
        for engine in ["host", "docker", "docker"] {
            let dir = try Fixtures.temporaryDirectory("fail-\(engine)")
            defer { FS.remove(dir) }
            let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "failing", "--engine", engine,
                                               "-r", dir + "/rootfs"], workingDirectory: dir)
            #expect(r.status == 1)
            #expect(!FS.exists(dir + "/rootfs"))
            let lines = r.stderr.split(separator: "\n").map(String.init)
            let report = lines.filter { $0.hasPrefix("error:") || $0.contains("the hook broke") || $0.hasPrefix("hint:") }
                .map { $0.replacingOccurrences(of: dir, with: "DIR") }
            reports.append(report.joined(separator: "\n"))
            imageLines += lines.filter { $0.contains("builder image: rootfs-builder-failing:trixie-") }
        }
        // The second container build finds the builder image (image inspect) and does not rebuild it.
        #expect(imageLines.last?.hasSuffix("up to date)") == true, "\(imageLines)")
        #expect(reports[2] == reports[0])
        #expect(reports[0].contains("error: build_rootfs() of distro 'failing' failed (exit status 7)"))
        #expect(reports[0].contains("the hook broke on purpose"))
        #expect(reports[1] == reports[0])
    }

    @Test func failingBuilderImageStepIsNamed() async throws {
        try await ContainerTrees.shared.seedBaseImage(.docker)
        let distros = try makeDistro(named: "badimage", dockerfile: """
            FROM debian:@OS_VERSION@
            RUN echo preparing the builder
            RUN echo about to fail && exit 3
            """, library: "build_rootfs() { :; }\n")
        defer { FS.remove(distros) }
        let dir = try Fixtures.temporaryDirectory("badimage")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "badimage", "--docker", "-r", dir + "/rootfs"],
                                          workingDirectory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("error: building the builder image rootfs-builder-badimage:trixie-"))
        // (The engine may append a LABEL step: "3/4".)
        #expect(r.stderr.contains("failed at step 3/"))
        #expect(r.stderr.contains(": RUN echo about to fail && exit 3 (exit status"))
        #expect(r.stderr.contains("hint: fix \(distros)/badimage/Dockerfile.in"))
        #expect(!FS.exists(dir + "/rootfs"))
    }

    @Test func missingBaseImageSaysHowToSeedIt() async throws {
        let distros = try makeDistro(named: "unseeded", dockerfile: "FROM rootfs-test-absent:@OS_VERSION@\n",
                                     library: "build_rootfs() { :; }\n")
        defer { FS.remove(distros) }
        let dir = try Fixtures.temporaryDirectory("unseeded")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "--distros-dir", distros, "unseeded", "--docker", "-r", dir + "/rootfs"],
                                          workingDirectory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("failed at step 1/"))
        #expect(r.stderr.contains(": FROM rootfs-test-absent:trixie (exit status"))
        #expect(r.stderr.contains("rootfs builder seed <distro> --engine docker"))
    }

    @Test func nonEmptyRootfsDirectoryIsRefusedBeforeAnythingRuns() async throws {
        let dir = try Fixtures.temporaryDirectory("nonempty")
        defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/rootfs")
        try "keep me".write(toFile: dir + "/rootfs/file", atomically: true, encoding: .utf8)
        let r = try await Fixtures.rootfs(["build", "debian", "--docker", "-r", dir + "/rootfs"], workingDirectory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("the rootfs directory \(dir)/rootfs is not empty"))
        #expect(try String(contentsOfFile: dir + "/rootfs/file", encoding: .utf8) == "keep me")
    }

    @Test func ctrlCRemovesTheContainerAndLeavesNoOutput() async throws {
        try await checkInterrupt(.docker)
    }
}

/// Ctrl-C during the hook: the container is removed and no output is written.
func checkInterrupt(_ kind: ContainerEngine.Kind) async throws {
    // The builder image first, so that the interrupt lands in the hook.
    _ = try await ContainerTrees.shared.tree(kind)
    let dir = try Fixtures.temporaryDirectory("ctrl-c")
    let logDir = try Fixtures.temporaryDirectory("ctrl-c-log")
    defer { FS.remove(dir); FS.remove(logDir) }
    // Timing matters here, and other tests block the cooperative thread pool while
    // they wait for their processes: watch and interrupt from a thread of our own.
    let seen = try await onOwnThread { try Interrupter.run(kind, dir: dir, logDir: logDir) }
    #expect(seen.name.hasPrefix("rootfs-build-debian-\(seen.pid)-"), "container \(seen.name), process \(seen.pid)")
    #expect(seen.runningBeforeInterrupt, "the build container never ran: \(seen.output.suffix(2000))")
    #expect(seen.status == 130, "\(seen.output.suffix(2000))")
    #expect(seen.output.contains("rootfs: interrupted"))
    #expect(seen.containersLeft.isEmpty, "containers left: \(seen.containersLeft)")
    let entries = try FileManager.default.contentsOfDirectory(atPath: dir)
    #expect(entries == ["build"], "left behind: \(entries)")
    let buildEntries = try FileManager.default.contentsOfDirectory(atPath: dir + "/build/debian")
    #expect(buildEntries.allSatisfy { $0 == "build.log" }, "left behind: \(buildEntries)")
}

/// Runs `body` on a thread of its own (not the cooperative pool).
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// Starts a Docker build, waits until mmdebstrap runs in its container, sends SIGINT
/// to the rootfs process and records what is left. Blocking code, on purpose.
enum Interrupter {
    struct Seen: Sendable {
        var pid: Int32
        var name = ""
        var runningBeforeInterrupt = false
        var status: Int32 = -1
        var output = ""
        var containersLeft = ""
    }

    static func engine(_ kind: ContainerEngine.Kind, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ProcessRunner.which(kind.rawValue) ?? "/usr/bin/\(kind.rawValue)")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func run(_ kind: ContainerEngine.Kind, dir: String, logDir: String) throws -> Seen {
        let log = logDir + "/stderr"
        FileManager.default.createFile(atPath: log, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.rootfsBinary)
        process.arguments = ["build", "debian", "--\(kind.rawValue)", "-r", dir + "/rootfs", "--initrd", dir + "/debian.initrd",
                             "--image", dir + "/debian.img"]
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardInput = FileHandle.nullDevice
        try process.run()
        var seen = Seen(pid: process.processIdentifier)
        func output() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        let deadline = Date().addingTimeInterval(300)
        while process.isRunning && Date() < deadline && !seen.runningBeforeInterrupt {
            let text = output()
            if seen.name.isEmpty, let line = text.split(separator: "\n").first(where: { $0.contains("| container: ") }) {
                seen.name = String(line.split(separator: " ").first { $0.hasPrefix("rootfs-build-debian-") } ?? "")
            }
            // mmdebstrap is writing into the tree.
            if !seen.name.isEmpty && text.contains("  | I: downloading packages") {
                seen.runningBeforeInterrupt = try engine(kind, ["ps", "--filter", "name=\(seen.name)", "--format", "{{.Names}}"])
                    == seen.name
            }
            if !seen.runningBeforeInterrupt { usleep(200_000) }
        }
        if seen.runningBeforeInterrupt && seen.name.hasPrefix("rootfs-build-debian-\(seen.pid)-") {
            sleep(1)
            kill(seen.pid, SIGINT)
        } else {
            process.terminate()
        }
        process.waitUntilExit()
        seen.status = process.terminationStatus
        seen.output = output()
        seen.containersLeft = seen.name.isEmpty ? ""
            : try engine(kind, ["ps", "--all", "--filter", "name=\(seen.name)", "--format", "{{.Names}}"])
        return seen
    }
}

@Suite(.requires(.root, .network, .podman), .tags(.root, .network, .podman)) struct ContainerBuildTestsRequiringPodman {
    @Test func podmanBuildWritesInitrdAndImageAndMatchesAHostBuild() async throws {
        let tree = try await ContainerTrees.shared.tree(.podman)
        for output in [tree.initrd, tree.image] {
            let size = try #require(try FileManager.default.attributesOfItem(atPath: output)[.size] as? Int)
            #expect(size > 10 << 20, "\(output) is \(size) bytes")
        }
        try await TreeCompare.checkAgainstHostBuild(tree)
        try TreeCompare.checkBuildDirectoryOwnership(FS.parent(tree.directory), skipping: tree.directory)
    }

    @Test func ctrlCRemovesThePodmanContainerAndLeavesNoOutput() async throws {
        try await checkInterrupt(.podman)
    }
}

/// Bad input that needs no running engine (only the clients on PATH).
@Suite struct ContainerEngineErrorTests {
    func pathWith(_ tools: [String]) throws -> String {
        let bin = try Fixtures.temporaryDirectory("bin")
        for tool in tools {
            guard let path = ProcessRunner.which(tool) else { continue }
            try FileManager.default.createSymbolicLink(atPath: bin + "/" + tool, withDestinationPath: path)
        }
        return bin
    }

    @Test func noEngineInstalled() async throws {
        let bin = try pathWith(["bash"])
        defer { FS.remove(bin) }
        for kind in ContainerEngine.Kind.allCases {
            let r = try await Fixtures.rootfs(["build", "debian", "--\(kind.rawValue)", "-r", bin + "/rootfs"],
                                              environment: ["PATH": bin])
            #expect(r.status == 1)
            #expect(r.stderr.contains("error: --\(kind.rawValue): the \(kind.displayName) client '\(kind.rawValue)' is not installed"))
            #expect(r.stderr.contains("hint: install it (apt-get install"))
        }
        // Neither the tools nor an engine: say both ways out.
        let r = try await Fixtures.rootfs(["build", "debian", "-r", bin + "/rootfs"], environment: ["PATH": bin])
        #expect(r.status == 1)
        #expect(r.stderr.contains("and no container engine answers"))
        #expect(!FS.exists(bin + "/rootfs"))
    }

    @Test func dockerDaemonNotRunningSaysHowToStartIt() async throws {
        let dir = try Fixtures.temporaryDirectory("dead")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "debian", "--docker", "-r", dir + "/rootfs"],
                                          environment: ["DOCKER_HOST": "unix://\(dir)/dead.sock"], workingDirectory: dir)
        #expect(r.status == 1)
        #expect(r.stderr.contains("the Docker engine at unix://\(dir)/dead.sock (DOCKER_HOST) is not answering"))
        #expect(r.stderr.contains("systemctl start docker"))
        #expect(r.stderr.contains("scripts/start-docker.sh"))
        #expect(!FS.exists(dir + "/rootfs"))
    }

    @Test func conflictingEngineFlagsAreRefused() async throws {
        let r = try await Fixtures.rootfs(["build", "debian", "--docker", "--engine", "podman", "--dry-run"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--engine, --docker and --podman disagree"))
    }
}
