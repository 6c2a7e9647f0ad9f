import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// The engine interface as data: command lines, mounts, environment, rendering
/// and tags. No engine runs here.
@Suite struct ContainerEngineTests {
    static let invocation = HookInvocation(
        helperPath: "/b/.rootfs.tmp-1/hook-helpers.sh", configPath: "/d/debian/config.sh",
        libraryPath: "/d/debian/rootfs_lib.sh", rootfsDirectory: "/b/.rootfs.tmp-1/rootfs",
        workingDirectory: "/d/debian",
        environment: ["ROOTFS_DIR": "/b/.rootfs.tmp-1/rootfs", "CONFIG_DIR": "/d/debian", "PACKAGES": "systemd less",
                      "OS_VERSION": "trixie", "REPO_URL": "http://mirror.invalid/debian", "EXTRA_PKGS": "less"])

    static func image(tag: String = "rootfs-builder-debian:trixie-0123") -> BuilderImage {
        BuilderImage(dockerfile: "FROM debian:trixie\n", baseImage: "debian:trixie", context: "/d/debian",
                     templatePath: "/d/debian/Dockerfile.in", inputsHash: "0123", tag: tag)
    }

    static let limits = [ContainerUlimit(name: "nofile", soft: 1024, hard: 1024),
                         ContainerUlimit(name: "nproc", soft: 2048, hard: 2048)]

    /// The values that follow each occurrence of `option`.
    func values(of option: String, in args: [String]) -> [String] {
        args.indices.dropLast().filter { args[$0] == option }.map { args[$0 + 1] }
    }

    @Test func runCommandGrantsOnlyTheHookCapabilitiesAndHostNetwork() throws {
        for kind in ContainerEngine.Kind.allCases {
            let engine = ContainerEngine(kind: kind, binary: "/usr/bin/\(kind.rawValue)", ulimits: Self.limits)
            let build = ContainerBuild(engine: engine, image: Self.image(), proxyEnvironment: [:], containerName: "c1")
            let cmd = try build.runCommand(for: Self.invocation)
            #expect(cmd.tool == "/usr/bin/\(kind.rawValue)")
            #expect(Array(cmd.arguments.prefix(4)) == ["run", "--rm", "--name", "c1"])
            #expect(!cmd.arguments.contains("--privileged"))
            #expect(values(of: "--cap-add", in: cmd.arguments) == ["SYS_ADMIN", "SYS_CHROOT", "MKNOD"])
            #expect(values(of: "--network", in: cmd.arguments) == ["host"])
            #expect(values(of: "--ulimit", in: cmd.arguments) == ["nofile=1024:1024", "nproc=2048:2048"])
            #expect(values(of: "--entrypoint", in: cmd.arguments) == ["bash"])
        }
    }

    @Test func podmanRuntimeIsAnOptionOfTheEngine() throws {
        let podman = ContainerEngine(kind: .podman, runtime: "runc")
        let run = try ContainerBuild(engine: podman, image: Self.image(), proxyEnvironment: [:], containerName: "c")
            .runCommand(for: Self.invocation)
        #expect(values(of: "--runtime", in: run.arguments) == ["runc"])
        let build = podman.buildCommand(tag: "t", dockerfile: "/tmp/Dockerfile", context: "/d/debian")
        #expect(values(of: "--runtime", in: build.arguments) == ["runc"])
        let docker = ContainerEngine(kind: .docker)
        let drun = try ContainerBuild(engine: docker, image: Self.image(), proxyEnvironment: [:], containerName: "c")
            .runCommand(for: Self.invocation)
        #expect(!drun.arguments.contains("--runtime"))
        // The classic builder names each step and honours --network host.
        #expect(docker.buildCommand(tag: "t", dockerfile: "f", context: "c").environment["DOCKER_BUILDKIT"] == "0")
    }

    @Test func mountsAreReadOnlyExceptTheTree() throws {
        let build = ContainerBuild(engine: ContainerEngine(kind: .docker), image: Self.image(), proxyEnvironment: [:],
                                   containerName: "c")
        let cmd = try build.runCommand(for: Self.invocation)
        #expect(values(of: "--mount", in: cmd.arguments) == [
            "type=bind,source=/d/debian,target=/rootfs-build/distro,readonly",
            "type=bind,source=/b/.rootfs.tmp-1/hook-helpers.sh,target=/rootfs-build/hook-helpers.sh,readonly",
            "type=bind,source=/b/.rootfs.tmp-1/rootfs,target=/rootfs-build/rootfs",
        ])
        #expect(values(of: "--workdir", in: cmd.arguments) == ["/rootfs-build/distro"])
    }

    @Test func theHookGetsTheHostArgvWithPathsMapped() throws {
        let build = ContainerBuild(engine: ContainerEngine(kind: .docker), image: Self.image(), proxyEnvironment: [:],
                                   containerName: "c")
        let cmd = try build.runCommand(for: Self.invocation)
        let imageAt = try #require(cmd.arguments.firstIndex(of: "rootfs-builder-debian:trixie-0123"))
        let argv = Array(cmd.arguments[(imageAt + 1)...])
        let host = Self.invocation.bashArguments()
        #expect(argv.count == host.count)
        #expect(Array(argv.prefix(5)) == Array(host.prefix(5)))  // same options and runner script
        #expect(Array(argv.suffix(4)) == ["/rootfs-build/hook-helpers.sh", "/rootfs-build/distro/config.sh",
                                          "/rootfs-build/distro/rootfs_lib.sh", "/rootfs-build/rootfs"])
    }

    @Test func environmentIsTheHooksWithPathsMappedAndProxiesInBothCases() throws {
        let proxies = ContainerBuild.proxies(from: ["https_proxy": "http://proxy.invalid:3128", "NO_PROXY": "localhost",
                                                    "PATH": "/usr/bin"])
        #expect(proxies == ["https_proxy": "http://proxy.invalid:3128", "HTTPS_PROXY": "http://proxy.invalid:3128",
                            "no_proxy": "localhost", "NO_PROXY": "localhost"])
        let build = ContainerBuild(engine: ContainerEngine(kind: .podman), image: Self.image(), proxyEnvironment: proxies,
                                   containerName: "c")
        let cmd = try build.runCommand(for: Self.invocation)
        let env = Dictionary(uniqueKeysWithValues: values(of: "--env", in: cmd.arguments).map { item -> (String, String) in
            let eq = item.firstIndex(of: "=")!
            return (String(item[..<eq]), String(item[item.index(after: eq)...]))
        })
        #expect(env["ROOTFS_DIR"] == "/rootfs-build/rootfs")
        #expect(env["CONFIG_DIR"] == "/rootfs-build/distro")
        #expect(env["PACKAGES"] == "systemd less")
        #expect(env["EXTRA_PKGS"] == "less")
        #expect(env["REPO_URL"] == "http://mirror.invalid/debian")
        #expect(env["HTTPS_PROXY"] == "http://proxy.invalid:3128")
        #expect(env["no_proxy"] == "localhost")
        #expect(env["PATH"] == nil)
        #expect(env.count == Self.invocation.environment.count + 4)
        // Proxies reach image builds too.
        let b = build.engine.buildCommand(tag: "t", dockerfile: "f", context: "c", buildArguments: proxies)
        #expect(values(of: "--build-arg", in: b.arguments).contains("http_proxy=http://proxy.invalid:3128") == false)
        #expect(values(of: "--build-arg", in: b.arguments).contains("HTTPS_PROXY=http://proxy.invalid:3128"))
    }

    @Test func aPathWithACommaIsRefusedRatherThanMisparsed() {
        var inv = Self.invocation
        inv.rootfsDirectory = "/b/a,b/rootfs"
        let build = ContainerBuild(engine: ContainerEngine(kind: .docker), image: Self.image(), proxyEnvironment: [:],
                                   containerName: "c")
        #expect(throws: RootfsError.self) { try build.runCommand(for: inv) }
    }

    @Test func ulimitsNeverExceedTheHostsHardLimits() {
        var nofile = rlimit(), nproc = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &nofile)
        getrlimit(__rlimit_resource_t(__RLIMIT_NPROC.rawValue), &nproc)
        let limits = ContainerEngine.hostUlimits(nofileCeiling: .max, nprocCeiling: .max)
        #expect(limits.first { $0.name == "nofile" }?.hard == UInt64(nofile.rlim_max))
        #expect(limits.first { $0.name == "nproc" }?.hard == UInt64(nproc.rlim_max))
        for limit in ContainerEngine.hostUlimits() {
            #expect(limit.soft <= limit.hard)
            let host = limit.name == "nofile" ? nofile.rlim_max : nproc.rlim_max
            #expect(limit.hard <= UInt64(host))
        }
        #expect(ContainerEngine.hostUlimits(nofileCeiling: 100, nprocCeiling: 50).map(\.hard) == [100, 50])
    }

    @Test func engineChoiceFromTheEnvironmentDockerWins() {
        #expect(EngineChoice.fromEnvironment([:]) == nil)
        #expect(EngineChoice.fromEnvironment(["USE_PODMAN": "true"]) == .podman)
        #expect(EngineChoice.fromEnvironment(["USE_DOCKER": "true", "USE_PODMAN": "true"]) == .docker)
        #expect(EngineChoice.fromEnvironment(["USE_DOCKER": "false"]) == nil)
    }

    @Test func infoImportInspectAndRemoveCommands() {
        let d = ContainerEngine(kind: .docker, binary: "docker")
        #expect(d.infoCommand().arguments == ["info", "--format", "{{.ServerVersion}}"])
        #expect(ContainerEngine(kind: .podman).infoCommand().arguments == ["info", "--format", "{{.Version.Version}}"])
        #expect(d.importCommand(tarball: "/t/r.tar", tag: "debian:trixie").arguments == ["import", "/t/r.tar", "debian:trixie"])
        #expect(d.imageInspectCommand("x:y").arguments == ["image", "inspect", "--format", "{{.Id}}", "x:y"])
        #expect(d.removeContainerCommand("c").arguments == ["rm", "--force", "c"])
        #expect(d.containerInspectCommand("c").arguments == ["container", "inspect", "--format", "{{.State.Status}}", "c"])
        let b = d.buildCommand(tag: "t:1", dockerfile: "/w/Dockerfile", context: "/d/debian", labels: ["k": "v"])
        #expect(Array(b.arguments.suffix(5)) == ["--tag", "t:1", "--file", "/w/Dockerfile", "/d/debian"])
        #expect(values(of: "--label", in: b.arguments) == ["k=v"])
    }

    // MARK: Dockerfile.in

    @Test func renderingFillsPlaceholdersAndRefusesUnknownOnes() throws {
        let out = try BuilderImage.render(template: "FROM @OS_NAME@:@OS_VERSION@\n# mail me@example.org\nRUN echo @ARCH@\n",
                                          values: ["OS_NAME": "debian", "OS_VERSION": "trixie", "ARCH": "x86_64"],
                                          templatePath: "t/Dockerfile.in")
        #expect(out == "FROM debian:trixie\n# mail me@example.org\nRUN echo x86_64\n")
        #expect(throws: RootfsError.self) {
            try BuilderImage.render(template: "FROM @NOPE@", values: [:], templatePath: "t/Dockerfile.in")
        }
    }

    @Test func builderBaseAndRegistryReplaceTheFromImage() async throws {
        let dir = try Fixtures.temporaryDirectory("dockerfile")
        defer { FS.remove(dir) }
        try "FROM --platform=linux/amd64 @DISTRO@:@OS_VERSION@ AS builder\nRUN true\n"
            .write(toFile: dir + "/Dockerfile.in", atomically: true, encoding: .utf8)
        let distro = Distro(name: "mini", directory: dir, searchDirectory: SearchDirectory(path: FS.parent(dir), origin: .option))
        func make(_ base: String?, _ registry: String?) async throws -> BuilderImage {
            try await BuilderImage.make(distro: distro, osName: "mini", osVersion: "1.0", architecture: "x86_64",
                                        builderBase: base, registry: registry)
        }
        let plain = try await make(nil, nil)
        #expect(plain.baseImage == "mini:1.0")
        #expect(plain.dockerfile.hasPrefix("FROM --platform=linux/amd64 @DISTRO@".replacingOccurrences(of: "@DISTRO@", with: "mini:1.0")))
        let mirrored = try await make(nil, "registry.invalid:5000/mirror")
        #expect(mirrored.baseImage == "registry.invalid:5000/mirror/mini:1.0")
        #expect(mirrored.dockerfile.contains("FROM --platform=linux/amd64 registry.invalid:5000/mirror/mini:1.0 AS builder"))
        let based = try await make("local/base:7", "registry.invalid")
        #expect(based.baseImage == "local/base:7")
        #expect(BuilderImage.fromImage(of: based.dockerfile) == "local/base:7")
        #expect(Set([plain.tag, mirrored.tag, based.tag]).count == 3)
    }

    @Test func tagChangesOnlyWithTheImageInputs() async throws {
        let dir = try Fixtures.temporaryDirectory("dockerfile")
        defer { FS.remove(dir) }
        try "FROM debian:@OS_VERSION@\nRUN true\n".write(toFile: dir + "/Dockerfile.in", atomically: true, encoding: .utf8)
        try "build_rootfs() { :; }\n".write(toFile: dir + "/rootfs_lib.sh", atomically: true, encoding: .utf8)
        let distro = Distro(name: "debian", directory: dir, searchDirectory: SearchDirectory(path: FS.parent(dir), origin: .option))
        func tag(version: String = "trixie", baseID: String? = nil) async throws -> String {
            try await BuilderImage.make(distro: distro, osName: "debian", osVersion: version, architecture: "x86_64",
                                        builderBase: nil, registry: nil, baseImageID: { _ in baseID }).tag
        }
        let first = try await tag()
        #expect(first.hasPrefix("rootfs-builder-debian:trixie-"))
        #expect(try await tag() == first)
        // The hook library is mounted, not built in: no rebuild.
        try "build_rootfs() { echo changed; }\n".write(toFile: dir + "/rootfs_lib.sh", atomically: true, encoding: .utf8)
        #expect(try await tag() == first)
        // A file the Dockerfile could COPY, the Dockerfile itself, the version and the base image are inputs.
        try "x\n".write(toFile: dir + "/extra.conf", atomically: true, encoding: .utf8)
        let withFile = try await tag()
        #expect(withFile != first)
        try "FROM debian:@OS_VERSION@\nRUN echo 2\n".write(toFile: dir + "/Dockerfile.in", atomically: true, encoding: .utf8)
        let changed = try await tag()
        #expect(changed != withFile)
        #expect(try await tag(version: "bookworm").hasPrefix("rootfs-builder-debian:bookworm-"))
        #expect(try await tag(baseID: "sha256:aaa") != changed)
    }

    @Test func failingStepIsFoundInEachBuildersOutput() {
        #expect(BuilderImage.failingStep(in: ["Step 1/3 : FROM debian:trixie", " ---> 1234", "Step 3/3 : RUN exit 3",
                                              " ---> Running in 99", "The command '/bin/sh -c exit 3' returned a non-zero code: 3"])
                == "step 3/3: RUN exit 3")
        #expect(BuilderImage.failingStep(in: ["STEP 1/2: FROM debian:trixie", "STEP 2/2: RUN exit 3", "Error: building at STEP"])
                == "step 2/2: RUN exit 3")
        #expect(BuilderImage.failingStep(in: ["#5 [1/2] FROM localhost/library/debian:trixie", "#6 [2/2] RUN exit 3"])
                == "step 2/2: RUN exit 3")
        #expect(BuilderImage.failingStep(in: ["no steps here"]) == nil)
    }

    @Test func debianDockerfileRendersForTrixie() async throws {
        let catalog = DistroCatalog.standard(distrosDirs: [Fixtures.repositoryRoot + "/distros"], environment: [:])
        let debian = try catalog.find("debian")
        let image = try await BuilderImage.make(distro: debian, osName: "debian", osVersion: "trixie",
                                                architecture: "x86_64", builderBase: nil, registry: nil)
        #expect(image.baseImage == "debian:trixie")
        #expect(image.dockerfile.contains("mmdebstrap"))
        #expect(!image.dockerfile.contains("@"))
    }
}
