import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// Distro directories with the shapes of Kata osbuilder's rootfs-builder/, written
/// here (no Kata file is used): they build with rootfs as they do with Kata's rootfs.sh.
enum KataShapes {
    /// A `rootfs-builder/` directory holding the given distros (name: files).
    static func make(_ distros: [String: [String: String]]) throws -> String {
        let dir = try Fixtures.temporaryDirectory("kata-shapes")
        for (name, files) in distros {
            try FS.makeDirectories(dir + "/rootfs-builder/" + name)
            for (file, text) in files { try Catalog.write(text, to: dir + "/rootfs-builder/" + name + "/" + file) }
        }
        return dir
    }

    /// Kata's ubuntu shape, reduced to busybox: config.sh reads SECCOMP and ARCH, rootfs_lib.sh
    /// reads a variable nobody sets (Kata's hooks run without nounset).
    static let siblingConfig = """
    OS_NAME=${OS_NAME:-siblingos}
    OS_VERSION=${OS_VERSION:-""}
    [[ -z "${OS_VERSION}" ]] && echo "OS_VERSION is required, but was not set" && exit 1
    PACKAGES="busybox"
    [[ "${SECCOMP}" = yes ]] && PACKAGES+=" libseccomp2"
    case "${ARCH}" in
        x86_64|aarch64) DEB_ARCH=native;;
        *) die "${ARCH} not supported"
    esac

    """
    static let siblingLib = #"""
    build_rootfs() {
        local rootfs_dir="${1:?rootfs_dir is required}"
        [[ -z "${NEVER_SET_BY_ANYONE}" ]] || die "unexpected"
        mkdir -p "${rootfs_dir}/bin" "${rootfs_dir}/etc"
        cp "${BUSYBOX}" "${rootfs_dir}/bin/busybox"
        ln -s busybox "${rootfs_dir}/bin/sh"
        printf '%s\n' "${OS_NAME} ${OS_VERSION} ${DEB_ARCH} libc=${LIBC} seccomp=${SECCOMP}" > "${rootfs_dir}/etc/kata-shape"
        printf '%s\n' ${PACKAGES} > "${rootfs_dir}/etc/packages"
        printf '%s\n' "${script_dir}" > "${rootfs_dir}/etc/script-dir"
    }

    """#
    /// Kata's debian shape: sets its own values, then sources the sibling's files.
    static let debianConfig = """
    OS_VERSION=${OS_VERSION:-10.11}
    # shellcheck source=/dev/null
    source "${script_dir}/sibling/${CONFIG_SH}"
    INIT_PROCESS=kata-agent
    ARCH_EXCLUDE_LIST=()

    """
    static let debianLib = "source \"${script_dir}/sibling/${LIB_SH}\"\n"

    static var busybox: String { ["/bin/busybox", "/usr/bin/busybox"].first { FS.isRegularFile($0) } ?? "/bin/busybox" }
}

/// Plans only (no package manager runs): the caller environment, arrays, INIT_PROCESS,
/// undeclared host tools and what a hook changes on the host.
@Suite struct KataCallerEnvironmentTests {
    @Test func arrayPackagesKataAgentInitAndKataDefaultsReachThePlan() async throws {
        let dir = try KataShapes.make(["arrays": [
            "config.sh": """
            OS_NAME=arrays
            OS_VERSION=${OS_VERSION:-1}
            PACKAGES=(
                apt
                "ca-certificates"
                busybox-static
            )
            [[ "${SECCOMP}" = "yes" ]] && PACKAGES+=(libseccomp)
            INIT_PROCESS=kata-agent
            ARCH_EXCLUDE_LIST=()

            """,
            "rootfs_lib.sh": "build_rootfs() { mkdir -p \"$1/etc\"; }\n",
        ]])
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "arrays", "--distros-dir", dir + "/rootfs-builder", "--dry-run",
                                           "-r", dir + "/rootfs"], environment: ["ARCH": "x86_64"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("packages: apt ca-certificates busybox-static libseccomp\n"), "\(r.stdout)")
        // kata-agent is Kata's spelling of agent: the agent is init.
        #expect(r.stdout.contains("init: /sbin/init -> /usr/bin/rootfs-agent (agent is init)"))
        #expect(r.stdout.contains("  LIBC=musl\n"))
        #expect(r.stdout.contains("  script_dir=\(dir)/rootfs-builder\n"))
        #expect(r.stdout.contains("  CONFIG_SH=config.sh\n") && r.stdout.contains("  LIB_SH=rootfs_lib.sh\n"))
        #expect(!FS.exists(dir + "/rootfs"))

        // Kata forces gnu where Rust has no musl target; the caller's values win.
        let s390 = try await Fixtures.rootfs(["build", "arrays", "--distros-dir", dir + "/rootfs-builder", "--dry-run"],
                                             environment: ["ARCH": "s390x", "SECCOMP": "no"], workingDirectory: dir)
        #expect(s390.stdout.contains("  LIBC=gnu\n"), "\(s390.stdout)")
        #expect(s390.stdout.contains("packages: apt ca-certificates busybox-static\n"))

        let list = try await Fixtures.rootfs(["list", "--distros-dir", dir + "/rootfs-builder"])
        let row = try #require(list.stdout.split(separator: "\n").first { $0.hasPrefix("arrays ") })
        #expect(row.contains(" agent "))
    }

    @Test func initProcessOutsideTheThreeValuesIsRefused() async throws {
        let dir = try KataShapes.make(["badinit": [
            "config.sh": "OS_NAME=x\nOS_VERSION=1\nINIT_PROCESS=openrc\n",
            "rootfs_lib.sh": "build_rootfs() { :; }\n",
        ]])
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "badinit", "--distros-dir", dir + "/rootfs-builder", "--dry-run"],
                                          workingDirectory: dir)
        #expect(r.status != 0)
        #expect(r.stderr.contains("INIT_PROCESS must be systemd, agent or kata-agent, not 'openrc'"), "\(r.stderr)")
    }

    /// Kata's hooks declare no HOST_TOOLS: MAKEDEV and the host's apt are found in the
    /// hook's text, shown as missing with their package, and a build stops before writing.
    @Test func undeclaredHostToolsAreListedAndStopTheBuild() async throws {
        let dir = try KataShapes.make(["ubuntuish": [
            "config.sh": "OS_NAME=ubuntuish\nOS_VERSION=${OS_VERSION:-noble}\nPACKAGES=\"init\"\n",
            "rootfs_lib.sh": """
            build_rootfs() {
                local rootfs_dir=$1
                # This fixes a spurious error (a comment naming tdnf is not a use)
                apt update
                mkdir -p "${rootfs_dir}/dev"
                pushd "${rootfs_dir}/dev" || return
                MAKEDEV -v console tty null zero
                popd || return
            }

            """,
        ]])
        defer { FS.remove(dir) }
        // A PATH holding bash alone: no MAKEDEV, no apt-get, no container engine.
        let bin = dir + "/bin"
        try FS.makeDirectories(bin)
        try FileManager.default.createSymbolicLink(atPath: bin + "/bash", withDestinationPath: try #require(ProcessRunner.which("bash")))
        let env = ["PATH": bin]
        let list = try await Fixtures.rootfs(["list", "--distros-dir", dir + "/rootfs-builder"], environment: env)
        let row = try #require(list.stdout.split(separator: "\n").first { $0.hasPrefix("ubuntuish ") }, "\(list.stdout)")
        #expect(row.contains("missing: "), "\(row)")
        #expect(row.contains("MAKEDEV (rootfs_lib.sh runs it undeclared; Debian package makedev)"))
        #expect(row.contains("apt-get (rootfs_lib.sh runs it undeclared; Debian package apt)"))
        #expect(!row.contains("tdnf"))

        let build = try await Fixtures.rootfs(["build", "ubuntuish", "--distros-dir", dir + "/rootfs-builder",
                                               "-r", dir + "/rootfs"], environment: env, workingDirectory: dir)
        #expect(build.status == 1)
        #expect(build.stderr.contains("needs apt-get (rootfs_lib.sh runs it undeclared; Debian package apt), MAKEDEV (rootfs_lib.sh runs it undeclared; Debian package makedev) on this host"), "\(build.stderr)")
        #expect(!FS.exists(dir + "/rootfs") && !FS.exists(dir + "/build"))

        // On a host that has the tools, the plan says the hook changes this host, and how not to.
        let plan = try await Fixtures.rootfs(["build", "ubuntuish", "--distros-dir", dir + "/rootfs-builder", "--dry-run"],
                                             workingDirectory: dir)
        #expect(plan.stdout.contains("changes this host: rootfs_lib.sh runs the host's `apt update` (add --docker or --podman to leave the host alone)"), "\(plan.stdout)")
    }

    /// Kata's guide's command scaffolds what `rootfs new` does.
    @Test func makeWithTemplateMakefileScaffoldsLikeRootfsNew() async throws {
        let dir = try Fixtures.temporaryDirectory("kata-make")
        defer { FS.remove(dir) }
        let made = try await Fixtures.run("/usr/bin/make", ["-f", Fixtures.repositoryRoot + "/template/Makefile",
                                                            "ROOTFS_BASE_NAME=my_new_awesome_rootfs", "DESTDIR=\(dir)/made",
                                                            "ROOTFS=\(Fixtures.rootfsBinary)"], workingDirectory: dir)
        #expect(made.status == 0, "\(made.stderr)")
        let new = try await Fixtures.rootfs(["new", "my_new_awesome_rootfs", "--distros-dir", dir + "/new"])
        #expect(new.status == 0, "\(new.stderr)")
        for file in ["config.sh", "rootfs_lib.sh", "Dockerfile.in"] {
            let a = FileManager.default.contents(atPath: dir + "/made/my_new_awesome_rootfs/" + file)
            #expect(a != nil && a == FileManager.default.contents(atPath: dir + "/new/my_new_awesome_rootfs/" + file), "\(file)")
        }
        // Without the name, make stops with the command to use; a bad name is rootfs new's refusal.
        let unnamed = try await Fixtures.run("/usr/bin/make", ["-f", Fixtures.repositoryRoot + "/template/Makefile",
                                                               "DESTDIR=\(dir)/x", "ROOTFS=\(Fixtures.rootfsBinary)"], workingDirectory: dir)
        #expect(unnamed.status != 0 && unnamed.stderr.contains("ROOTFS_BASE_NAME is not set"))
        let bad = try await Fixtures.run("/usr/bin/make", ["-f", Fixtures.repositoryRoot + "/template/Makefile", "ROOTFS_BASE_NAME=Bad'Name",
                                                           "DESTDIR=\(dir)/x", "ROOTFS=\(Fixtures.rootfsBinary)"], workingDirectory: dir)
        #expect(bad.status != 0 && bad.stderr.contains("invalid distro name 'Bad'Name'"), "\(bad.stderr)")
        #expect(!FS.exists(dir + "/x"))
    }

    /// The default dnf build_rootfs's plan, and its refusal without a repository.
    @Test func noRootfsLibPlansKatasDefaultDnfBuild() async throws {
        let dir = try KataShapes.make(["centosish": [
            "config.sh": """
            OS_NAME=centosish
            OS_VERSION=${OS_VERSION:-stream9}
            PACKAGES="chrony iptables"
            [[ "${AGENT_INIT}" = no ]] && PACKAGES+=" systemd"
            [[ "${SECCOMP}" = yes ]] && PACKAGES+=" libseccomp"

            """,
        ]])
        defer { FS.remove(dir) }
        let refused = try await Fixtures.rootfs(["build", "centosish", "--distros-dir", dir + "/rootfs-builder", "-r", dir + "/r"],
                                                workingDirectory: dir)
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("this distro has no rootfs_lib.sh, so Kata's default build_rootfs (dnf --installroot) installs it, and it has no repository"), "\(refused.stderr)")
        #expect(!FS.exists(dir + "/r"))
        let plan = try await Fixtures.rootfs(["build", "centosish", "--distros-dir", dir + "/rootfs-builder", "--dry-run", "-r", dir + "/r"],
                                             environment: ["BASE_URL": "file:///srv/repo"], workingDirectory: dir)
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stdout.contains("  dnf -y --installroot=\(dir)/.r.tmp-XXXXXX/rootfs --noplugins '--config=<generated: kata-centosish-dnf.conf>' install chrony iptables systemd libseccomp\n"), "\(plan.stdout)")
        #expect(plan.stdout.contains("warning: no GPG_KEY_URL"))
    }
}

/// Real builds of Kata-shaped directories on this host.
@Suite(.requires(.root, .busybox), .tags(.root, .busybox)) struct KataSiblingBuildTestsRequiringRootAndBusybox {
    /// Kata's debian: config.sh and rootfs_lib.sh source the sibling's through ${script_dir}.
    @Test func debianStyleDistroSourcesItsSiblingThroughScriptDir() async throws {
        let dir = try KataShapes.make([
            "sibling": ["config.sh": KataShapes.siblingConfig, "rootfs_lib.sh": KataShapes.siblingLib],
            "debianish": ["config.sh": KataShapes.debianConfig, "rootfs_lib.sh": KataShapes.debianLib],
        ])
        defer { FS.remove(dir) }
        let rootfs = dir + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "debianish", "--distros-dir", dir + "/rootfs-builder", "-r", rootfs],
                                          environment: ["BUSYBOX": KataShapes.busybox, "ARCH": "x86_64"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        // The sibling's config ran with debian's OS_VERSION, Kata's LIBC and SECCOMP defaults.
        #expect(try String(contentsOfFile: rootfs + "/etc/kata-shape", encoding: .utf8) == "siblingos 10.11 native libc=musl seccomp=yes\n")
        #expect(try String(contentsOfFile: rootfs + "/etc/packages", encoding: .utf8) == "busybox\nlibseccomp2\n")
        #expect(try String(contentsOfFile: rootfs + "/etc/script-dir", encoding: .utf8) == dir + "/rootfs-builder\n")
        // INIT_PROCESS=kata-agent: the agent is /sbin/init.
        let check = try await Fixtures.rootfs(["check", "--agent-init", rootfs])
        #expect(check.status == 0, "\(check.stderr)")
    }
}

/// Kata's centos shape (no rootfs_lib.sh) built by the default dnf build_rootfs from a local
/// RPM repository (real rpmbuild, createrepo_c, dnf --installroot).
@Suite(.requires(.root, .dnf), .tags(.root, .dnf)) struct KataDefaultDnfBuildTestsRequiringDNF {
    @Test func noRootfsLibBuildsWithDnfInstallroot() async throws {
        let dir = try KataShapes.make(["centosish": [
            "config.sh": """
            OS_NAME=centosish
            OS_VERSION=${OS_VERSION:-9}
            PACKAGES=(rootfs-kata-hello)
            [[ "${SECCOMP}" = yes ]] && PACKAGES+=(rootfs-kata-seccomp)
            INIT_PROCESS=kata-agent

            """,
        ]])
        defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/repo")
        for name in ["rootfs-kata-hello", "rootfs-kata-seccomp"] {
            try Catalog.write("""
            Name: \(name)
            Version: 1.0
            Release: 1
            Summary: rootfs Kata test package
            License: MIT
            BuildArch: noarch
            %description
            A file for the Kata default build_rootfs test.
            %install
            mkdir -p %{buildroot}/usr/share/\(name) %{buildroot}/usr/share/doc/\(name)
            echo '\(name)' > %{buildroot}/usr/share/\(name)/hello.txt
            echo 'docs' > %{buildroot}/usr/share/doc/\(name)/README
            %files
            /usr/share/\(name)/hello.txt
            /usr/share/doc/\(name)/README

            """, to: dir + "/\(name).spec")
            try await Catalog.run("rpmbuild", ["-bb", "--define", "_topdir \(dir)/rpmbuild", dir + "/\(name).spec"])
            try FileManager.default.copyItem(atPath: dir + "/rpmbuild/RPMS/noarch/\(name)-1.0-1.noarch.rpm",
                                             toPath: dir + "/repo/\(name)-1.0-1.noarch.rpm")
        }
        try await Catalog.run("createrepo_c", ["-q", dir + "/repo"])

        let rootfs = dir + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "centosish", "--distros-dir", dir + "/rootfs-builder", "-r", rootfs],
                                          environment: ["BASE_URL": "file://\(dir)/repo"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("INFO: install packages for rootfs: dnf -y --installroot="), "\(r.stderr)")
        // Both packages of the array (SECCOMP=yes is Kata's default), documentation trimmed as Kata does.
        #expect(try String(contentsOfFile: rootfs + "/usr/share/rootfs-kata-hello/hello.txt", encoding: .utf8) == "rootfs-kata-hello\n")
        #expect(FS.isRegularFile(rootfs + "/usr/share/rootfs-kata-seccomp/hello.txt"))
        #expect(!FS.exists(rootfs + "/usr/share/doc"))
        #expect(!FS.exists(rootfs + "/var/cache/dnf"))
        // The RPM database lists them, where the guest's rpm looks (not Debian's ~/.rpmdb).
        #expect(!FS.exists(rootfs + "/root/.rpmdb"))
        let q = try await Catalog.run("rpm", ["--root", rootfs, "--dbpath", "/var/lib/rpm", "-qa", "--qf", "%{NAME}\\n"])
        #expect(Set(q.standardOutput.split(separator: "\n").map(String.init)) == ["rootfs-kata-hello", "rootfs-kata-seccomp"])
        // kata-agent: the agent is init; the generated dnf configuration was not left anywhere.
        let check = try await Fixtures.rootfs(["check", "--agent-init", rootfs])
        #expect(check.status == 0, "\(check.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/rootfs-builder/centosish") == ["config.sh"])
    }
}

/// A Kata-style Dockerfile.in (@INSTALL_RUST@, @SET_PROXY@, ARG RUST_TOOLCHAIN) built through
/// each engine, with a debian-style hook that sources its sibling through ${script_dir} inside
/// the container.
enum KataContainerBuild {
    static let dockerfile = """
    FROM debian:@OS_VERSION@
    @SET_PROXY@
    ARG RUST_TOOLCHAIN
    RUN printf '%s\\n' "${RUST_TOOLCHAIN}" > /etc/rootfs-rust-toolchain
    @INSTALL_RUST@

    """
    static let siblingLib = #"""
    build_rootfs() {
        local rootfs_dir="${1:?rootfs_dir is required}"
        mkdir -p "${rootfs_dir}/etc"
        cp /etc/apt/apt.conf.d/80rootfs-proxy "${rootfs_dir}/etc/builder-proxy"
        cp /etc/rootfs-rust-toolchain "${rootfs_dir}/etc/builder-rust-toolchain"
        printf '%s\n' "${script_dir}" "${OS_NAME}" > "${rootfs_dir}/etc/builder-script-dir"
    }

    """#

    static func run(_ kind: ContainerEngine.Kind) async throws {
        try await ContainerTrees.shared.seedBaseImage(kind)
        let dir = try KataShapes.make([
            "sibling": ["config.sh": "OS_NAME=${OS_NAME:-siblingos}\nOS_VERSION=${OS_VERSION:-trixie}\nPACKAGES=\"\"\n",
                        "rootfs_lib.sh": siblingLib],
            "debianish": ["config.sh": "OS_VERSION=${OS_VERSION:-trixie}\nsource \"${script_dir}/sibling/${CONFIG_SH}\"\nINIT_PROCESS=kata-agent\n",
                          "rootfs_lib.sh": KataShapes.debianLib, "Dockerfile.in": dockerfile],
        ])
        defer { FS.remove(dir) }
        let plan = try await Fixtures.rootfs(["build", "debianish", "--distros-dir", dir + "/rootfs-builder", "--\(kind.rawValue)",
                                              "--dry-run"], environment: ["http_proxy": "http://proxy.invalid:3128"],
                                             workingDirectory: dir)
        #expect(plan.status == 0, "\(plan.stderr)")
        #expect(plan.stdout.contains("target=\(ContainerPaths.scriptDirectory),readonly"), "\(plan.stdout)")

        let rootfs = dir + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "debianish", "--distros-dir", dir + "/rootfs-builder", "--\(kind.rawValue)",
                                           "-r", rootfs],
                                          environment: ["http_proxy": "http://proxy.invalid:3128", "RUST_TOOLCHAIN": "1.85.0"],
                                          workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr.suffix(3000))")
        #expect(r.stderr.contains("in \(kind.rawValue) (builder image rootfs-builder-debianish:trixie-"))
        // @SET_PROXY@ configured the builder image's apt from the http_proxy build argument.
        #expect(try String(contentsOfFile: rootfs + "/etc/builder-proxy", encoding: .utf8) == "Acquire::http::Proxy \"http://proxy.invalid:3128\";\n")
        // RUST_TOOLCHAIN reached the image as Kata's build argument.
        #expect(try String(contentsOfFile: rootfs + "/etc/builder-rust-toolchain", encoding: .utf8) == "1.85.0\n")
        #expect(try String(contentsOfFile: rootfs + "/etc/builder-script-dir", encoding: .utf8) == "\(ContainerPaths.scriptDirectory)\nsiblingos\n")
        let check = try await Fixtures.rootfs(["check", "--agent-init", rootfs])
        #expect(check.status == 0, "\(check.stderr)")
    }
}

@Suite(.requires(.root, .docker, .network), .tags(.root, .docker, .network)) struct KataDockerfileTestsRequiringDocker {
    @Test func kataDockerfileBuildsThroughDocker() async throws { try await KataContainerBuild.run(.docker) }
}

@Suite(.requires(.root, .podman, .network), .tags(.root, .podman, .network)) struct KataDockerfileTestsRequiringPodman {
    @Test func kataDockerfileBuildsThroughPodman() async throws { try await KataContainerBuild.run(.podman) }
}
