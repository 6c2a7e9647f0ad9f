import Foundation
import Testing
@testable import RootfsKit
@testable import RootfsImage
@testable import RootfsSupport

/// A real `rootfs build fedora` on this Debian host: real rpmbuild, createrepo_c
/// and dnf --installroot from a file:// repository (no Fedora mirror needed).
@Suite(.requires(.dnf, .busybox), .tags(.dnf, .busybox)) struct FedoraBuildTestsRequiringDNF {
    @Test func fedoraBuildInstallsTheRPMFromALocalRepositoryWithAnRPMDatabase() async throws {
        let dir = try Fixtures.temporaryDirectory("fedora-build")
        defer { FS.remove(dir) }
        // A tiny noarch RPM holding one file.
        let spec = """
        Name: rootfs-hello
        Version: 1.0
        Release: 1
        Summary: rootfs test package
        License: MIT
        BuildArch: noarch
        %description
        A file for the rootfs fedora test.
        %install
        mkdir -p %{buildroot}/usr/share/rootfs-hello
        echo 'hello from an rpm' > %{buildroot}/usr/share/rootfs-hello/hello.txt
        %files
        /usr/share/rootfs-hello/hello.txt

        """
        try Catalog.write(spec, to: dir + "/hello.spec")
        try await Catalog.run("rpmbuild", ["-bb", "--define", "_topdir \(dir)/rpmbuild", dir + "/hello.spec"])
        try FS.makeDirectories(dir + "/repo")
        try FileManager.default.copyItem(atPath: dir + "/rpmbuild/RPMS/noarch/rootfs-hello-1.0-1.noarch.rpm",
                                         toPath: dir + "/repo/rootfs-hello-1.0-1.noarch.rpm")
        try await Catalog.run("createrepo_c", ["-q", dir + "/repo"])

        let initrd = dir + "/fedora.initrd"
        let rootfs = dir + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "fedora", "--agent-init", "--initrd", initrd, "-r", rootfs,
                                           "--compression", "gzip"],
                                          environment: ["REPO_URL": "file://\(dir)/repo", "PACKAGES": "rootfs-hello",
                                                        "GPG_KEY_URL": ""],
                                          workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        // The warning about gpgcheck=0 is shown.
        #expect(r.stderr.contains("gpgcheck=0"))

        // The initrd, read back: the RPM's file, an RPM database, the agent as init.
        let paths = try Catalog.archivePaths(initrd)
        #expect(paths.contains("usr/share/rootfs-hello/hello.txt"))
        #expect(paths.contains("usr/lib/sysimage/rpm/rpmdb.sqlite"), "no RPM database in \(paths.sorted())")
        #expect(paths.contains("sbin/init"))
        #expect(paths.contains("usr/bin/rootfs-agent"))
        #expect(!paths.contains { $0.hasPrefix("var/cache/dnf/") }, "dnf's cache was left in the guest")
        // The RPM database lists the package (queried where Fedora keeps it).
        let q = try await Catalog.run("rpm", ["--root", rootfs, "--dbpath", "/usr/lib/sysimage/rpm", "-q", "rootfs-hello"])
        #expect(q.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines) == "rootfs-hello-1.0-1.noarch")
        let files = try await Catalog.run("rpm", ["--root", rootfs, "--dbpath", "/usr/lib/sysimage/rpm", "-ql", "rootfs-hello"])
        #expect(files.standardOutput.contains("/usr/share/rootfs-hello/hello.txt"))
        // And the tree passes the checks every image passes.
        let check = try await Fixtures.rootfs(["check", "--agent-init", rootfs])
        #expect(check.status == 0, "\(check.stderr)")
    }

    @Test func aPackageTheRepositoryDoesNotHaveFailsWithDnfsMessage() async throws {
        let dir = try Fixtures.temporaryDirectory("fedora-missing")
        defer { FS.remove(dir) }
        try FS.makeDirectories(dir + "/repo")
        try await Catalog.run("createrepo_c", ["-q", dir + "/repo"])
        let r = try await Fixtures.rootfs(["build", "fedora", "--agent-init", "-r", dir + "/rootfs"],
                                          environment: ["REPO_URL": "file://\(dir)/repo", "PACKAGES": "no-such-package"],
                                          workingDirectory: dir)
        #expect(r.status != 0)
        #expect(r.stderr.contains("build_rootfs() of distro 'fedora' failed"))
        #expect(r.stderr.contains("no-such-package"), "dnf's message is missing:\n\(r.stderr)")
        #expect(!FS.exists(dir + "/rootfs"))
    }
}

/// `rootfs new`, round trip: scaffold, list, the stub's clear failure, a filled-in
/// build_rootfs() (a busybox-static tree), a real build writing an initrd.
@Suite(.requires(.busybox), .tags(.busybox)) struct ScaffoldTestsRequiringBusybox {
    @Test func newDistroIsListedFailsClearlyAsAStubAndBuildsOnceImplemented() async throws {
        let dir = try Fixtures.temporaryDirectory("scaffold")
        defer { FS.remove(dir) }
        let distros = dir + "/distros"
        let created = try await Fixtures.rootfs(["new", "tiny-os_1", "--distros-dir", distros, "--os-version", "7"])
        #expect(created.status == 0, "\(created.stderr)")
        let config = try String(contentsOfFile: distros + "/tiny-os_1/config.sh", encoding: .utf8)
        #expect(config.contains("OS_NAME=tiny-os_1"))
        #expect(config.contains("OS_VERSION=${OS_VERSION:-7}"))
        #expect(!config.contains("@"))
        let dockerfile = try String(contentsOfFile: distros + "/tiny-os_1/Dockerfile.in", encoding: .utf8)
        #expect(dockerfile.contains("FROM tiny-os_1:@OS_VERSION@"))

        let list = try await Fixtures.rootfs(["list", "--distros-dir", distros])
        #expect(list.status == 0)
        let row = try #require(list.stdout.split(separator: "\n").first { $0.hasPrefix("tiny-os_1 ") })
        #expect(row.contains("7"))
        #expect(row.contains(distros + "/tiny-os_1"))

        // The untouched stub: a clear failure naming the file and the function.
        let stub = try await Fixtures.rootfs(["build", "tiny-os_1", "--distros-dir", distros, "--agent-init",
                                              "--initrd", dir + "/tiny.initrd"], workingDirectory: dir)
        #expect(stub.status != 0)
        let firstLine = stub.stderr.split(separator: "\n").first { $0.hasPrefix("error:") } ?? ""
        #expect(firstLine.contains("build_rootfs()"))
        #expect(firstLine.contains(distros + "/tiny-os_1/rootfs_lib.sh"))
        #expect(firstLine.contains("stub"))
        #expect(!FS.exists(dir + "/tiny.initrd"))

        // Implement it: a busybox-static tree.
        let busybox = try #require(["/bin/busybox", "/usr/bin/busybox"].first { FS.isRegularFile($0) }, "busybox-static is not installed")
        let lib = """
        build_rootfs() {
            local rootfs_dir=$1
            mkdir -p "$rootfs_dir/bin" "$rootfs_dir/etc"
            cp "$BUSYBOX" "$rootfs_dir/bin/busybox"
            ln -s busybox "$rootfs_dir/bin/sh"
            printf '%s\\n' "$OS_NAME $OS_VERSION" > "$rootfs_dir/etc/os-release"
        }

        """
        try Catalog.write(lib, to: distros + "/tiny-os_1/rootfs_lib.sh")
        let built = try await Fixtures.rootfs(["build", "tiny-os_1", "--distros-dir", distros, "--agent-init",
                                               "--initrd", dir + "/tiny.initrd", "--compression", "gzip"],
                                              environment: ["BUSYBOX": busybox], workingDirectory: dir)
        #expect(built.status == 0, "\(built.stderr)")
        let paths = try Catalog.archivePaths(dir + "/tiny.initrd")
        #expect(paths.isSuperset(of: ["bin/busybox", "bin/sh", "etc/os-release", "sbin/init", "usr/bin/rootfs-agent",
                                      "var/lib/osbuilder/osbuilder.yaml"]))
    }

    @Test func newRefusesBadNamesExistingDirectoriesAndUnknownSources() async throws {
        let dir = try Fixtures.temporaryDirectory("scaffold-bad")
        defer { FS.remove(dir) }
        let distros = dir + "/distros"
        for bad in ["MyOS", "my os", "../escape", "-x", "a/b", "ünï"] {
            let r = try await Fixtures.rootfs(["new", "--distros-dir", distros, "--", bad])
            #expect(r.status != 0, "\(bad) was accepted")
            #expect(r.stderr.contains("invalid distro name"), "\(bad): \(r.stderr)")
        }
        #expect(!FS.exists(distros), "a refused name created something")

        try FS.makeDirectories(distros + "/mine")
        try Catalog.write("keep me\n", to: distros + "/mine/notes.txt")
        let existing = try await Fixtures.rootfs(["new", "mine", "--distros-dir", distros])
        #expect(existing.status != 0)
        #expect(existing.stderr.contains("already exists"))
        #expect(try String(contentsOfFile: distros + "/mine/notes.txt", encoding: .utf8) == "keep me\n")
        #expect(!FS.exists(distros + "/mine/config.sh"))

        let unknown = try await Fixtures.rootfs(["new", "other", "--from", "no-such-distro", "--distros-dir", distros])
        #expect(unknown.status != 0)
        #expect(unknown.stderr.contains("--from no-such-distro"))
        #expect(unknown.stderr.contains("known distros:"))
        #expect(!FS.exists(distros + "/other"))
        // Nothing half-written was left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: distros) == ["mine"])
    }

    @Test func newFromCopiesAnExistingDistro() async throws {
        let dir = try Fixtures.temporaryDirectory("scaffold-from")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["new", "my-fedora", "--from", "fedora", "--distros-dir", dir])
        #expect(r.status == 0, "\(r.stderr)")
        for file in ["config.sh", "rootfs_lib.sh", "Dockerfile.in"] {
            let copy = FileManager.default.contents(atPath: dir + "/my-fedora/" + file)
            let original = FileManager.default.contents(atPath: Fixtures.repositoryRoot + "/distros/fedora/" + file)
            #expect(copy != nil && copy == original, "\(file) differs")
        }
        let plan = try await Fixtures.rootfs(["build", "my-fedora", "--distros-dir", dir, "--dry-run"],
                                             environment: ["REPO_URL": "file:///srv/repo"], workingDirectory: dir)
        #expect(plan.status == 0)
        #expect(plan.stdout.contains("my-fedora: \(dir)/my-fedora (found via --distros-dir)"))
    }
}

/// A distro directory written the way Kata's osbuilder expects builds unchanged.
@Suite(.requires(.root, .busybox), .tags(.root, .busybox)) struct KataDropInTestsRequiringRootAndBusybox {
    @Test func kataStyleDistroBuildsWithInfoDieOKAndExtraPkgs() async throws {
        let dir = try Fixtures.temporaryDirectory("kata")
        defer { FS.remove(dir) }
        let distro = dir + "/rootfs-builder/katalike"
        try FS.makeDirectories(distro)
        // As in Kata: plain assignments, a test that may be false at the end, no build_rootfs here.
        try Catalog.write("""
        OS_NAME="KataLike"
        OS_VERSION=${OS_VERSION:-2.0}
        PACKAGES="busybox"
        INIT_PROCESS=agent
        ARCH_EXCLUDE_LIST=()
        [ "$SECCOMP" = "yes" ] && PACKAGES+=" libseccomp" || true
        [ "$ARCH" == "s390x" ] && PACKAGES+=" s390-tools"

        """, to: distro + "/config.sh")
        // Kata's rootfs_lib.sh shape: locals from the environment under set -u, Kata's helpers.
        try Catalog.write("""
        #!/bin/bash
        build_rootfs() {
            # Mandatory
            local ROOTFS_DIR=$1
            # Name of the Kata-Agent binary
            local BIN_AGENT=${BIN_AGENT}
            # In case of support EXTRA packages, use it to allow
            # users to add more packages to the base rootfs
            local EXTRA_PKGS=${EXTRA_PKGS:-}
            local REPO_URL=${REPO_URL:-YOUR_REPO}
            # PATH where files this script is placed
            local CONFIG_DIR=${CONFIG_DIR}
            check_root
            [ -n "${BUSYBOX:-}" ] || die "BUSYBOX is not set"
            check_program cp || die "cp is missing"
            mkdir -p "${ROOTFS_DIR}/bin" "${ROOTFS_DIR}/etc"
            info "populating ${ROOTFS_DIR} from ${CONFIG_DIR} for ${BIN_AGENT}"
            cp "${BUSYBOX}" "${ROOTFS_DIR}/bin/busybox"
            ln -s busybox "${ROOTFS_DIR}/bin/sh"
            echo "${OS_NAME} ${OS_VERSION}" > "${ROOTFS_DIR}/etc/os-release"
            local pkg
            for pkg in ${PACKAGES} ${EXTRA_PKGS}; do echo "${pkg}" >> "${ROOTFS_DIR}/etc/packages"; done
            cp "${CONFIG_DIR}/config.sh" "${ROOTFS_DIR}/etc/kata-config.sh"
            OK "rootfs populated"
        }

        """, to: distro + "/rootfs_lib.sh")
        try Catalog.write("FROM katalike:@OS_VERSION@\nRUN true\n", to: distro + "/Dockerfile.in")

        let busybox = try #require(["/bin/busybox", "/usr/bin/busybox"].first { FS.isRegularFile($0) }, "busybox-static is not installed")
        let rootfs = dir + "/rootfs"
        let r = try await Fixtures.rootfs(["build", "katalike", "--distros-dir", dir + "/rootfs-builder", "-r", rootfs],
                                          environment: ["BUSYBOX": busybox, "EXTRA_PKG": "vim emacs"], workingDirectory: dir)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr.contains("INFO: populating \(dir)/.rootfs.tmp-"))
        #expect(r.stderr.contains("[OK] rootfs populated"))
        #expect(r.stderr.contains("for rootfs-agent"))
        let packages = try String(contentsOfFile: rootfs + "/etc/packages", encoding: .utf8)
        // SECCOMP=yes is Kata's default, so config.sh adds libseccomp.
        #expect(packages == "busybox\nlibseccomp\nvim\nemacs\n")
        #expect(try String(contentsOfFile: rootfs + "/etc/os-release", encoding: .utf8) == "KataLike 2.0\n")
        // INIT_PROCESS=agent: the agent is init.
        let check = try await Fixtures.rootfs(["check", "--agent-init", rootfs])
        #expect(check.status == 0, "\(check.stderr)")

        // die in the Kata hook: its message leads the error.
        let died = try await Fixtures.rootfs(["build", "katalike", "--distros-dir", dir + "/rootfs-builder", "-r", dir + "/r2"],
                                             environment: ["BUSYBOX": ""], workingDirectory: dir)
        #expect(died.status != 0)
        #expect(died.stderr.contains("failed (exit status 1): BUSYBOX is not set"))
        #expect(!FS.exists(dir + "/r2"))
    }
}

/// The package manager's own refusal reaches the user (needs Debian's mirror).
@Suite(.requires(.root, .network), .tags(.root, .network)) struct DebianBadSuiteTestsRequiringNetwork {
    @Test func anUnknownSuiteShowsMmdebstrapsMessage() async throws {
        let dir = try Fixtures.temporaryDirectory("badsuite")
        defer { FS.remove(dir) }
        let r = try await Fixtures.rootfs(["build", "debian", "--agent-init", "--os-version", "nosuchsuite", "-r", dir + "/rootfs"],
                                          workingDirectory: dir)
        #expect(r.status != 0)
        #expect(r.stderr.contains("build_rootfs() of distro 'debian' failed"))
        #expect(r.stderr.contains("nosuchsuite"))
        #expect(r.stderr.contains("Release"))
        #expect(r.stderr.contains("E: "), "mmdebstrap's error lines are missing:\n\(r.stderr)")
        #expect(!FS.exists(dir + "/rootfs"))
    }
}
