import Foundation
import KilnSupport
import KilnWinRM
import Testing
@testable import KilnBuild
@testable import KilnCustomizers

#if canImport(FoundationXML)
import FoundationXML
#endif

/// The PowerShell Kiln generates for Windows guests: structure, and quoting of values with quotes, `$` and
/// non-ASCII characters. (No PowerShell runs on these machines; these tests pin what is sent.)
@Suite struct WindowsScriptTests {
    static let nasty = "it's \"$env:HOME\" `n ü ✓ ’quoted’ ; & | > %PATH%"

    @Test func literalsQuoteEverything() {
        #expect(PowerShell.quote("plain") == "'plain'")
        #expect(PowerShell.quote("it's") == "'it''s'")
        #expect(PowerShell.quote("$x `y \"z\"") == "'$x `y \"z\"'")
        // PowerShell treats typographic single quotes as quotes too.
        #expect(PowerShell.quote("a’b‘c") == "'a’’b‘‘c'")
        #expect(PowerShell.quote("") == "''")
    }

    @Test func encodedCommandsRoundTripAnyCharacter() {
        let script = "Write-Output \(PowerShell.quote(Self.nasty))\n# 日本語 😀"
        let line = PowerShell.commandLine(script)
        #expect(line.hasPrefix("powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "))
        #expect(!line.contains("'"))
        #expect(!line.contains("$"))
        #expect(PowerShell.decode(commandLine: line) == script)
        // UTF-16LE: an astral character is a surrogate pair, not four UTF-8 bytes.
        let bytes = Data(base64Encoded: String(line.split(separator: " ").last!))!
        #expect(bytes.count == script.utf16.count * 2)
    }

    @Test func inlineAndScriptRunners() {
        let inline = WindowsScripts.inlineScript(["Write-Host 'a'", "cmd /c exit 3"])
        #expect(inline.hasPrefix("$ProgressPreference = 'SilentlyContinue'\n"))
        #expect(inline.hasSuffix("cmd /c exit 3\nexit $LASTEXITCODE\n"))
        let run = PowerShell.decode(commandLine: WindowsScripts.runScriptCommand(path: #"C:\Windows\Temp\script-it's.ps1"#))!
        #expect(run.contains(#"& 'C:\Windows\Temp\script-it''s.ps1'"#))
        #expect(run.contains("exit $LASTEXITCODE"))
        #expect(run.contains("$env:PACKER_BUILDER_TYPE = 'azure-arm'; $env:PACKER_BUILD_NAME = 'azure-arm'"))
    }

    @Test func elevatedWrapperAsUserAndAsSystem() {
        let command = "powershell.exe -File \"C:\\Windows\\Temp\\x y.ps1\" \(Self.nasty)"
        let asUser = WindowsScripts.elevated(command: command, principal: .user(name: "Admin'istrator", password: "p'a$s\"w✓"), id: "abc")
        #expect(asUser.contains("$command = \(PowerShell.quote(command))"))
        #expect(asUser.contains("$folder.RegisterTaskDefinition($name, $task, 6, 'Admin''istrator', 'p''a$s\"w✓', 1)"))
        #expect(asUser.contains("$task.Principal.RunLevel = 1"))
        #expect(asUser.contains("$task.Settings.ExecutionTimeLimit = 'PT0S'"))
        #expect(asUser.contains("$name = 'kiln-elevated-abc'"))
        #expect(asUser.contains("exit $result"))
        #expect(asUser.contains("$folder.DeleteTask($name, 0)"))
        // Output and exit code come from the task: its log is tailed, its LastTaskResult returned.
        #expect(asUser.contains("$result = $current.LastTaskResult"))
        #expect(asUser.contains("' > \"' + $log + '\" 2>&1'"))
        let asSystem = WindowsScripts.elevated(command: "whoami", principal: .system, id: "def")
        #expect(asSystem.contains("RegisterTaskDefinition($name, $task, 6, 'SYSTEM', $null, 5)"))
        #expect(!asSystem.contains("p'a"))
        // Every line outside the quoted literals is fixed text: count the quotes to be sure the literal closes.
        let commandLine = asUser.split(separator: "\n").first { $0.hasPrefix("$command = ") }!
        #expect(commandLine.filter { $0 == "'" }.count % 2 == 0)
    }

    @Test func restartProbes() {
        #expect(PowerShell.decode(commandLine: WindowsScripts.restartedProbe)!.contains("'{0} restarted.' -f [System.Net.Dns]::GetHostName()"))
        #expect(PowerShell.decode(commandLine: WindowsScripts.bootIdentity)!.contains("LastBootUpTime"))
    }

    @Test func windowsUpdateScript() {
        let script = WindowsScripts.windowsUpdate(searchCriteria: "IsInstalled=0 and Type='Software'",
                                                  filters: ["exclude:$_.Title -like '*Preview*'", "include:$_.Title -match \"Cumulative\"", "include:$true"],
                                                  updateLimit: 25)
        #expect(script.contains("$searchCriteria = 'IsInstalled=0 and Type=''Software'''"))
        #expect(script.contains("$updateLimit = 25"))
        #expect(script.contains("@{ Action = 'exclude'; Text = '$_.Title -like ''*Preview*'''; Test = [ScriptBlock]::Create('$_.Title -like ''*Preview*''') }"))
        #expect(script.contains("@{ Action = 'include'; Text = '$_.Title -match \"Cumulative\"'"))
        // First match decides; none matching skips.
        #expect(script.contains("if (& $filter.Test) { $decision = $filter; break }"))
        #expect(script.contains("if ($null -eq $decision -or $decision.Action -ne 'include')"))
        #expect(script.contains("Exit-With 101"))
        #expect(script.contains("Write-Output \"Exiting with code $code\""))
        #expect(script.contains("KBArticleIDs"))
        #expect(script.contains("MaxDownloadSize"))
        let defaults = WindowsScripts.windowsUpdate(searchCriteria: nil, filters: [], updateLimit: nil)
        #expect(defaults.contains("$searchCriteria = 'BrowseOnly=0 and IsInstalled=0'"))
        #expect(defaults.contains("$updateLimit = 1000"))
        #expect(defaults.contains("Action = 'include'; Text = '$true'"))
        // A filter without an action matches nothing, as in rgl/packer-plugin-windows-update's script.
        let noAction = WindowsScripts.windowsUpdate(searchCriteria: nil, filters: ["$_.BrowseOnly"], updateLimit: nil)
        #expect(noAction.contains("Text = ''; Test = [ScriptBlock]::Create('') }"))
        #expect(WindowsScripts.updateNeedsRestart(101))
        #expect(WindowsScripts.updateNeedsRestart(Int32(bitPattern: 2_147_942_501)))
        #expect(!WindowsScripts.updateNeedsRestart(0))
    }

    @Test func sysprepDeprovisioning() {
        let script = PowerShell.decode(commandLine: WindowsScripts.deprovision)!
        let override = script.range(of: "C:\\DeprovisioningScript.ps1")!
        let sysprep = script.range(of: "Sysprep.exe\" /oobe /generalize /quiet /quit")!
        #expect(override.lowerBound < sysprep.lowerBound)
        #expect(script.contains("'RdAgent', 'WindowsAzureTelemetryService', 'WindowsAzureGuestAgent'"))
        #expect(script.contains("Get-Service -Name $service -ErrorAction SilentlyContinue"))
        #expect(script.contains("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"))
        #expect(script.contains("Panther\\\\unattend.xml") || script.contains("Panther\\unattend.xml"))
        #expect(script.contains("'>>> Sysprep complete ...'"))
        #expect(!script.contains("/mode:vm"))
    }

    @Test("the power-off is scheduled first, then Kiln's WinRM setup script, firewall rule, listener and certificate leave the image")
    func powerOffRemovesWhatKilnAdded() throws {
        let script = try #require(PowerShell.decode(commandLine: WindowsScripts.powerOffCommand))
        let shutdown = try #require(script.range(of: "shutdown.exe /s /f /t 5"))
        for added in [WindowsScripts.winRMSetupScriptPath, "firewall delete rule name='Kiln WinRM HTTPS'", "Cert:\\LocalMachine\\My",
                      "$listeners | Remove-Item -Recurse -Force"] {
            let removal = try #require(script.range(of: added), "\(added)")
            #expect(shutdown.upperBound < removal.lowerBound, "\(added) is removed after the power-off is scheduled")
        }
        // The listener this command runs over goes last.
        #expect(script.hasSuffix("$listeners | Remove-Item -Recurse -Force"))
        // What the first-logon script adds is what this removes.
        #expect(WindowsScripts.enableWinRMHTTPS.contains("firewall add rule name='Kiln WinRM HTTPS'"))
    }

    @Test("a kept Windows VM's command line pins the certificate the build saw, instead of --insecure")
    func keptWindowsVMPinsItsCertificate() {
        var vm = KeptVM(runID: "r", templateName: "t", templatePath: "/t.json", domainName: "d", sshPort: 5986, username: "kiln",
                        privateKeyPath: "", knownHostsPath: "", hostKey: "", owner: "", keptAt: Date(), failure: "",
                        winrmURL: "https://127.0.0.1:5986/wsman", winrmPasswordPath: "/r/winrm-password", winrmCertificateSHA256: "ab12")
        #expect(vm.reachCommand.contains("--pin-sha256 ab12"))
        #expect(!vm.reachCommand.contains("--insecure"))
        vm.winrmCertificateSHA256 = nil
        #expect(vm.reachCommand.contains("--insecure"))
    }

    @Test func unattendIsWellFormedAndHidesThePassword() throws {
        let password = "Ab3$<&>'\"ü"
        let xml = WindowsScripts.unattend(administratorPassword: password, computerName: "kiln-<1>")
        #expect(!xml.contains(password))
        let parser = XMLParser(data: Data(xml.utf8))
        #expect(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? "")")
        let values = xml.components(separatedBy: "<Value>").dropFirst().map { String($0.prefix { $0 != "<" }) }
        #expect(values.count == 2)
        func decode(_ base64: String) -> String {
            let data = Data(base64Encoded: base64)!
            return String(decoding: stride(from: 0, to: data.count, by: 2).map { UInt16(data[$0]) | UInt16(data[$0 + 1]) << 8 }, as: UTF16.self)
        }
        #expect(decode(values[0]) == password + "AdministratorPassword")
        #expect(decode(values[1]) == password + "Password")
        #expect(xml.contains("<ComputerName>kiln-&lt;1&gt;</ComputerName>"))
        #expect(xml.contains("-File C:\\Windows\\Setup\\Scripts\\kiln-winrm.ps1"))
        #expect(WindowsScripts.enableWinRMHTTPS.contains("-Transport HTTPS"))
        #expect(WindowsScripts.enableWinRMHTTPS.contains("localport=5986"))
    }

    @Test func generatedPasswordsMeetComplexity() {
        for _ in 0..<50 {
            let password = WindowsScripts.generatePassword()
            #expect(password.count == 24)
            #expect(password.contains { $0.isUppercase })
            #expect(password.contains { $0.isLowercase })
            #expect(password.contains { $0.isNumber })
            #expect(password.contains { "-_.+=".contains($0) })
        }
        #expect(WindowsScripts.generatePassword() != WindowsScripts.generatePassword())
    }
}
