#!/usr/bin/env python3
"""
Populate a SCRATCH NetBox database with a spread of objects so that tools/catalogue/check.py has something to
compare against. Never point this at a template or production database: it refuses to run unless the
configured database name contains "scratch".

    NETBOX_ROOT=/tmp/nbo-cat-instance /root/.cache/nbo/venv-4.7.3/bin/python tools/catalogue/seed.py
"""

import datetime
import os
import sys
import traceback
from decimal import Decimal

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')
import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.db import transaction  # noqa: E402
from netaddr import IPNetwork  # noqa: E402

DBNAME = settings.DATABASES['default']['NAME']
if 'scratch' not in DBNAME:
    sys.exit(f'refusing to seed database {DBNAME!r}: its name must contain "scratch"')

from circuits.models import *  # noqa: E402,F401,F403
from core.models import DataSource  # noqa: E402
from dcim.models import *  # noqa: E402,F401,F403
from extras.models import *  # noqa: E402,F401,F403
from ipam.models import *  # noqa: E402,F401,F403
from tenancy.models import *  # noqa: E402,F401,F403
from django.db.backends.postgresql.psycopg_any import NumericRange  # noqa: E402
from users.models import Group, ObjectPermission, Owner, OwnerGroup, User  # noqa: E402
from virtualization.models import *  # noqa: E402,F401,F403
from vpn.models import *  # noqa: E402,F401,F403
from wireless.models import *  # noqa: E402,F401,F403

FAILED = []
O = {}


def make(key, fn):
    try:
        with transaction.atomic():
            obj = fn()
        O[key] = obj
        return obj
    except Exception as e:
        FAILED.append((key, repr(e)))
        traceback.print_exc(limit=2)
        return None


def ct(model):
    return ContentType.objects.get_for_model(model)


def main():
    # Tenancy / users
    make('ownergroup', lambda: OwnerGroup.objects.create(name='Owners', description='grp'))
    make('owner', lambda: Owner.objects.create(name='Team A', group=O.get('ownergroup')))
    make('user', lambda: User.objects.create(username='alice', first_name='Alice', last_name='Smith'))
    make('user2', lambda: User.objects.create(username='bob'))
    make('tenantgroup', lambda: TenantGroup.objects.create(name='TG1', slug='tg1'))
    make('tenantgroup2', lambda: TenantGroup.objects.create(name='TG2', slug='tg2', parent=O['tenantgroup']))
    make('tenant', lambda: Tenant.objects.create(name='Tenant \u00e9 1', slug='tenant-1', group=O['tenantgroup2']))
    make('contactgroup', lambda: ContactGroup.objects.create(name='CG', slug='cg'))
    make('contactrole', lambda: ContactRole.objects.create(name='Admin', slug='admin'))
    make('contact', lambda: Contact.objects.create(name='Jane', email='jane@example.com', link='https://x.example'))
    make('tag1', lambda: Tag.objects.create(name='Zeta', slug='zeta', weight=10))
    make('tag2', lambda: Tag.objects.create(name='alpha', slug='alpha', weight=1000))

    # DCIM basics
    make('region', lambda: Region.objects.create(name='Europe', slug='europe'))
    make('region2', lambda: Region.objects.create(name='DE', slug='de', parent=O['region']))
    make('sitegroup', lambda: SiteGroup.objects.create(name='SG', slug='sg'))
    make('rir', lambda: RIR.objects.create(name='RIPE', slug='ripe'))
    make('asn', lambda: ASN.objects.create(asn=65000, rir=O['rir']))
    make('asn2', lambda: ASN.objects.create(asn=4200000001, rir=O['rir']))
    make('asnrange', lambda: ASNRange.objects.create(name='Private', slug='private', rir=O['rir'], start=64512,
                                                      end=65534))

    def site():
        s = Site.objects.create(name='Site 1', slug='site-1', status='active', region=O['region2'],
                                group=O['sitegroup'], tenant=O['tenant'], facility='F1', time_zone='Europe/Berlin',
                                latitude=Decimal('12.3456'), longitude=Decimal('-45.123456'), owner=O.get('owner'))
        s.asns.set([O['asn'], O['asn2']])
        s.tags.set([O['tag1'], O['tag2']])
        return s
    make('site', site)
    make('site2', lambda: Site.objects.create(name='Site 2', slug='site-2'))
    make('location', lambda: Location.objects.create(name='Room 1', slug='room-1', site=O['site'], status='active'))
    make('rackgroup', lambda: RackGroup.objects.create(name='RG', slug='rg'))
    make('rackrole', lambda: RackRole.objects.create(name='Core', slug='core', color='ff0000'))
    make('manufacturer', lambda: Manufacturer.objects.create(name='Acme', slug='acme'))
    make('racktype', lambda: RackType.objects.create(manufacturer=O['manufacturer'], model='RT-42', slug='rt-42',
                                                      form_factor='4-post-cabinet', u_height=42))
    make('rack', lambda: Rack.objects.create(name='R1', site=O['site'], location=O['location'], facility_id='FAC-1',
                                             role=O['rackrole'], u_height=42, rack_type=O.get('racktype'),
                                             group=O.get('rackgroup')))
    make('rack2', lambda: Rack.objects.create(name='R2', site=O['site']))
    make('rackreservation', lambda: RackReservation.objects.create(rack=O['rack'], units=[1, 2, 3], user=O['user'],
                                                                    description='res'))
    make('devicerole', lambda: DeviceRole.objects.create(name='Router', slug='router', color='00ff00'))
    make('platform', lambda: Platform.objects.create(name='IOS', slug='ios', manufacturer=O['manufacturer']))
    make('devicetype', lambda: DeviceType.objects.create(manufacturer=O['manufacturer'], model='DT-1',
                                                          slug='dt-1', u_height=Decimal('1.5')))
    make('moduletypeprofile', lambda: ModuleTypeProfile.objects.create(name='Seed profile', schema={'properties': {}}))
    make('moduletype', lambda: ModuleType.objects.create(manufacturer=O['manufacturer'], model='MT-1',
                                                          profile=O.get('moduletypeprofile')))
    make('modulebaytype', lambda: ModuleBayType.objects.create(name='SFP bay'))

    # Templates
    dt = O.get('devicetype')
    make('consoleporttemplate', lambda: ConsolePortTemplate.objects.create(device_type=dt, name='con0', label='C'))
    make('consoleserverporttemplate', lambda: ConsoleServerPortTemplate.objects.create(device_type=dt, name='cs0'))
    make('powerporttemplate', lambda: PowerPortTemplate.objects.create(device_type=dt, name='psu0'))
    make('poweroutlettemplate', lambda: PowerOutletTemplate.objects.create(device_type=dt, name='po0',
                                                                            power_port=O.get('powerporttemplate')))
    make('interfacetemplate', lambda: InterfaceTemplate.objects.create(device_type=dt, name='eth0',
                                                                        type='1000base-t'))
    make('rearporttemplate', lambda: RearPortTemplate.objects.create(device_type=dt, name='rp0', type='8p8c'))
    make('frontporttemplate', lambda: FrontPortTemplate.objects.create(device_type=dt, name='fp0', type='8p8c'))
    make('devicebaytemplate', lambda: DeviceBayTemplate.objects.create(device_type=dt, name='bay0'))
    make('modulebaytemplate', lambda: ModuleBayTemplate.objects.create(device_type=dt, name='mb0'))
    make('inventoryitemtemplate', lambda: InventoryItemTemplate.objects.create(device_type=dt, name='inv0'))
    for key, cls in (('coolingintaketemplate', 'CoolingIntakeTemplate'),
                     ('coolingoutflowtemplate', 'CoolingOutflowTemplate')):
        make(key, lambda cls=cls: getattr(sys.modules['dcim.models'], cls).objects.create(device_type=dt,
                                                                                          name=f'{cls[:9]}0'))

    # Devices
    make('cluster_type', lambda: ClusterType.objects.create(name='VMware', slug='vmware'))
    make('clustergroup', lambda: ClusterGroup.objects.create(name='CLG', slug='clg'))
    make('cluster', lambda: Cluster.objects.create(name='C1', type=O['cluster_type'], group=O['clustergroup'],
                                                   scope=O.get('site')))
    make('virtualchassis', lambda: VirtualChassis.objects.create(name='VC1', domain='d'))
    make('device', lambda: Device.objects.create(name='dev1', device_type=dt, role=O['devicerole'], site=O['site'],
                                                 rack=O['rack'], position=Decimal('10'), face='front',
                                                 asset_tag='AT-1', serial='SN1', tenant=O['tenant'],
                                                 platform=O['platform'], latitude=Decimal('1.5')))
    make('device2', lambda: Device.objects.create(device_type=dt, role=O['devicerole'], site=O['site']))
    make('device3', lambda: Device.objects.create(device_type=dt, role=O['devicerole'], site=O['site'],
                                                  asset_tag='AT-3'))
    make('device4', lambda: Device.objects.create(device_type=dt, role=O['devicerole'], site=O['site'],
                                                  virtual_chassis=O['virtualchassis'], vc_position=2))
    d = O.get('device')
    make('consoleport', lambda: ConsolePort.objects.get_or_create(device=d, name='con0')[0])
    make('consoleserverport', lambda: ConsoleServerPort.objects.get_or_create(device=d, name='cs0')[0])
    make('powerport', lambda: PowerPort.objects.get_or_create(device=d, name='psu0')[0])
    make('poweroutlet', lambda: PowerOutlet.objects.get_or_create(device=d, name='po0')[0])
    make('interface', lambda: Interface.objects.get_or_create(device=d, name='eth0')[0])
    make('interface2', lambda: Interface.objects.create(device=O['device2'], name='eth1', type='1000base-t',
                                                        label='uplink', mtu=9000, speed=1000000,
                                                        description='d'))
    make('rearport', lambda: RearPort.objects.get_or_create(device=d, name='rp0')[0])
    make('frontport', lambda: FrontPort.objects.get_or_create(device=d, name='fp0')[0])
    make('devicebay', lambda: DeviceBay.objects.get_or_create(device=d, name='bay0')[0])
    make('modulebay', lambda: ModuleBay.objects.get_or_create(device=d, name='mb0')[0])
    make('inventoryitemrole', lambda: InventoryItemRole.objects.create(name='Fan', slug='fan'))
    make('inventoryitem', lambda: InventoryItem.objects.create(device=d, name='inv1', role=O['inventoryitemrole'],
                                                               component=O.get('interface')))
    make('module', lambda: Module.objects.create(device=d, module_bay=O['modulebay'], module_type=O['moduletype'],
                                                 serial='MS1'))
    make('coolingintake', lambda: CoolingIntake.objects.get_or_create(device=d, name='CoolingIn0')[0])
    make('coolingoutflow', lambda: CoolingOutflow.objects.get_or_create(device=d, name='CoolingOu0')[0])
    make('coolingsource', lambda: CoolingSource.objects.create(name='CRAC1', site=O['site']))
    make('coolingfeed', lambda: CoolingFeed.objects.create(name='CF1', cooling_source=O['coolingsource'],
                                                           rack=O['rack']))
    make('vdc', lambda: VirtualDeviceContext.objects.create(device=d, name='vdc1', status='active', identifier=5))
    make('macaddress', lambda: MACAddress.objects.create(mac_address='00:1a:2b:3c:4d:5e',
                                                         assigned_object=O.get('interface')))
    make('powerpanel', lambda: PowerPanel.objects.create(site=O['site'], name='PP1'))
    make('powerfeed', lambda: PowerFeed.objects.create(power_panel=O['powerpanel'], name='PF1',
                                                       rack=O['rack']))
    make('cablebundle', lambda: CableBundle.objects.create(name='B1'))

    def cable():
        c = Cable(a_terminations=[O['interface']], b_terminations=[O['interface2']], label='', length=Decimal('2.5'),
                  length_unit='m', color='aabbcc')
        c.save()
        return c
    make('cable', cable)

    def cable2():
        c = Cable(a_terminations=[O['consoleport']], b_terminations=[O['consoleserverport']], label='CBL-2')
        c.save()
        return c
    make('cable2', cable2)

    # Circuits
    make('provider', lambda: Provider.objects.create(name='Prov', slug='prov'))
    make('provideraccount', lambda: ProviderAccount.objects.create(provider=O['provider'], account='A-1',
                                                                   name='Main'))
    make('provideraccount2', lambda: ProviderAccount.objects.create(provider=O['provider'], account='A-2'))
    make('providernetwork', lambda: ProviderNetwork.objects.create(provider=O['provider'], name='PNet'))
    make('circuittype', lambda: CircuitType.objects.create(name='Transit', slug='transit'))
    make('circuit', lambda: Circuit.objects.create(cid='CID-1', provider=O['provider'], type=O['circuittype'],
                                                   install_date=datetime.date(2024, 1, 2), commit_rate=1000,
                                                   distance=Decimal('12.5'), distance_unit='km'))
    make('circuittermination', lambda: CircuitTermination.objects.create(circuit=O['circuit'], term_side='A',
                                                                         termination=O['site']))
    make('circuitgroup', lambda: CircuitGroup.objects.create(name='CG1', slug='cg1'))
    make('circuitgroupassignment', lambda: CircuitGroupAssignment.objects.create(
        group=O['circuitgroup'], member=O['circuit'], priority='primary'))
    make('virtualcircuittype', lambda: VirtualCircuitType.objects.create(name='VCT', slug='vct'))
    make('virtualcircuit', lambda: VirtualCircuit.objects.create(cid='VC-1', provider_network=O['providernetwork'],
                                                                 type=O['virtualcircuittype']))
    make('virtualcircuittermination', lambda: VirtualCircuitTermination.objects.create(
        virtual_circuit=O['virtualcircuit'], interface=O['interface2'], role='hub'))

    # IPAM
    make('vrf', lambda: VRF.objects.create(name='VRF1', rd='65000:1'))
    make('vrf2', lambda: VRF.objects.create(name='VRF2'))
    make('routetarget', lambda: RouteTarget.objects.create(name='65000:100'))
    make('role', lambda: Role.objects.create(name='Prod', slug='prod'))
    make('aggregate', lambda: Aggregate.objects.create(prefix=IPNetwork('10.0.0.0/8'), rir=O['rir']))
    make('prefix', lambda: Prefix.objects.create(prefix=IPNetwork('10.1.0.0/16'), vrf=O['vrf'], scope=O['site']))
    make('prefix6', lambda: Prefix.objects.create(prefix=IPNetwork('2001:db8::/32')))
    make('iprange', lambda: IPRange.objects.create(start_address=IPNetwork('10.1.0.10/16'),
                                                   end_address=IPNetwork('10.1.0.20/16')))
    make('iprange2', lambda: IPRange.objects.create(start_address=IPNetwork('10.0.0.1/24'),
                                                    end_address=IPNetwork('10.0.1.1/24')))
    make('iprange6', lambda: IPRange.objects.create(start_address=IPNetwork('2001:db8::1/64'),
                                                    end_address=IPNetwork('2001:db8::ff/64')))
    make('ipaddress', lambda: IPAddress.objects.create(address=IPNetwork('10.1.0.1/32'), vrf=O['vrf'],
                                                       assigned_object=O['interface'], dns_name='a.example'))
    make('ipaddress6', lambda: IPAddress.objects.create(address=IPNetwork('2001:db8::1/128')))
    make('fhrpgroup', lambda: FHRPGroup.objects.create(protocol='vrrp2', group_id=10, name='G'))
    make('fhrpgroup2', lambda: FHRPGroup.objects.create(protocol='hsrp', group_id=11))
    make('ipaddress_fhrp', lambda: IPAddress.objects.create(address=IPNetwork('10.9.0.1/24'),
                                                            assigned_object=O['fhrpgroup']))
    make('fhrpgroupassignment', lambda: FHRPGroupAssignment.objects.create(group=O['fhrpgroup'],
                                                                           interface=O['interface'], priority=100))
    make('vlangroup', lambda: VLANGroup.objects.create(name='VG', slug='vg', scope=O['site']))
    make('vlan', lambda: VLAN.objects.create(vid=100, name='V100', group=O['vlangroup'], status='active'))
    make('vlantranslationpolicy', lambda: VLANTranslationPolicy.objects.create(name='VTP'))
    make('vlantranslationrule', lambda: VLANTranslationRule.objects.create(policy=O['vlantranslationpolicy'],
                                                                           local_vid=10, remote_vid=20))
    make('servicetemplate', lambda: ServiceTemplate.objects.create(name='SSH', port_mappings=['tcp/22']))
    make('service', lambda: Service.objects.create(name='HTTP', parent=d, port_mappings=['tcp/80', 'tcp/443']))

    # Virtualization
    make('virtualmachinetype', lambda: VirtualMachineType.objects.create(name='small', slug='small'))
    make('virtualmachine', lambda: VirtualMachine.objects.create(name='vm1', cluster=O['cluster'], vcpus=Decimal('2'),
                                                                 memory=1024))
    make('vminterface', lambda: VMInterface.objects.create(virtual_machine=O['virtualmachine'], name='vnic0'))
    make('virtualdisk', lambda: VirtualDisk.objects.create(virtual_machine=O['virtualmachine'], name='disk0',
                                                           size=100))

    # VPN
    make('tunnelgroup', lambda: TunnelGroup.objects.create(name='TG', slug='tg'))
    make('ikeproposal', lambda: IKEProposal.objects.create(name='IKEP', authentication_method='preshared-keys',
                                                           encryption_algorithm='aes-128-cbc',
                                                           authentication_algorithm='hmac-sha1', group=14))
    make('ikepolicy', lambda: IKEPolicy.objects.create(name='IKEPOL', version=2))
    make('ipsecproposal', lambda: IPSecProposal.objects.create(name='IPSP', encryption_algorithm='aes-128-cbc'))
    make('ipsecpolicy', lambda: IPSecPolicy.objects.create(name='IPSPOL'))
    make('ipsecprofile', lambda: IPSecProfile.objects.create(name='IPSPROF', mode='esp', ike_policy=O['ikepolicy'],
                                                             ipsec_policy=O['ipsecpolicy']))
    make('tunnel', lambda: Tunnel.objects.create(name='T1', status='active', encapsulation='gre',
                                                 group=O['tunnelgroup']))
    make('tunneltermination', lambda: TunnelTermination.objects.create(tunnel=O['tunnel'], role='peer',
                                                                       termination=O['interface']))
    make('l2vpn', lambda: L2VPN.objects.create(name='L2', slug='l2', type='vxlan', identifier=5000))
    make('l2vpntermination', lambda: L2VPNTermination.objects.create(l2vpn=O['l2vpn'], assigned_object=O['vlan']))

    # Wireless
    make('wirelesslangroup', lambda: WirelessLANGroup.objects.create(name='WG', slug='wg'))
    make('wirelesslan', lambda: WirelessLAN.objects.create(ssid='corp', group=O['wirelesslangroup']))

    def wlink():
        a = Interface.objects.create(device=d, name='wlan0', type='ieee802.11ac')
        b = Interface.objects.create(device=O['device2'], name='wlan0', type='ieee802.11ac')
        return WirelessLink.objects.create(interface_a=a, interface_b=b, ssid='')
    make('wirelesslink', wlink)

    # Extras
    make('contactassignment', lambda: ContactAssignment.objects.create(object=O['site'], contact=O['contact'],
                                                                       role=O['contactrole'], priority='primary'))
    make('contactassignment2', lambda: ContactAssignment.objects.create(object=O['device'], contact=O['contact'],
                                                                        role=O['contactrole']))
    make('customfieldchoiceset', lambda: CustomFieldChoiceSet.objects.create(
        name='CS', extra_choices=[['a', 'A'], ['b', 'B']]))

    def customfield():
        cf = CustomField.objects.create(name='cf_text_field', type='text')
        cf.object_types.set([ct(Site)])
        return cf
    make('customfield', customfield)
    make('customfield2', lambda: CustomField.objects.create(name='cf_int', type='integer', label='Int CF'))
    make('customlink', lambda: CustomLink.objects.create(name='CL', link_text='x', link_url='http://x'))
    make('exporttemplate', lambda: ExportTemplate.objects.create(name='ET', template_code='x'))
    make('savedfilter', lambda: SavedFilter.objects.create(name='SF', slug='sf', parameters={'a': 1}))
    make('tableconfig', lambda: TableConfig.objects.create(name='TC', object_type=ct(Site), table='SiteTable',
                                                           columns=['name', 'status'], ordering=['name']))
    make('webhook', lambda: Webhook.objects.create(name='WH', payload_url='http://127.0.0.1:1/'))

    def eventrule():
        er = EventRule.objects.create(name='ER', event_types=['object_created'], action_type='webhook',
                                      action_object=O['webhook'], enabled=False)
        er.object_types.set([ct(Site)])
        return er
    make('eventrule', eventrule)
    make('notificationgroup', lambda: NotificationGroup.objects.create(name='NG'))
    make('configcontextprofile', lambda: ConfigContextProfile.objects.create(name='CCP'))
    make('configcontext', lambda: ConfigContext.objects.create(name='CC', data={'x': 1}, weight=100))
    make('configtemplate', lambda: ConfigTemplate.objects.create(name='CT', template_code='{{ x }}'))
    make('journalentry', lambda: JournalEntry.objects.create(assigned_object=O['site'], kind='info',
                                                             comments='hello', created_by=O['user']))
    make('datasource', lambda: DataSource.objects.create(name='DS', type='local', source_url='file:///tmp/x'))

    # Extra variety: primary IPs, VLAN modes, MAC primaries, odd IPv6 forms, custom field values, users
    def extra_device():
        dev = O['device']
        dev.primary_ip4 = O['ipaddress']
        dev.oob_ip = O['ipaddress']
        dev.save()
        return dev
    make('device_primary', extra_device)

    def extra_interface():
        i = O['interface2']
        i.mode = 'tagged'
        i.untagged_vlan = O['vlan']
        i.vrf = O['vrf']
        i.primary_mac_address = MACAddress.objects.create(mac_address='aa:bb:cc:00:11:22', assigned_object=i)
        i.save()
        i.tagged_vlans.set([O['vlan']])
        i.tags.set([O['tag2']])
        return i
    make('interface2b', extra_interface)
    make('ip_v6_a', lambda: IPAddress.objects.create(address=IPNetwork('2001:db8:0:1:0:0:0:1/64'), status='dhcp',
                                                     role='vip', description='v6'))
    make('ip_v6_b', lambda: IPAddress.objects.create(address=IPNetwork('2001:0:0:1:0:0:0:1/64')))
    make('ip_v6_mapped', lambda: IPAddress.objects.create(address=IPNetwork('::ffff:1.2.3.4/128')))
    make('ip_nat', lambda: IPAddress.objects.create(address=IPNetwork('192.0.2.1/24'), nat_inside=O['ipaddress']))
    make('vm_primary', lambda: (setattr(O['virtualmachine'], 'primary_ip4', IPAddress.objects.create(
        address=IPNetwork('10.5.0.1/24'), assigned_object=O['vminterface'])), O['virtualmachine'].save(),
        O['virtualmachine'])[2])
    make('group', lambda: Group.objects.create(name='Ops'))
    make('objectpermission', lambda: ObjectPermission.objects.create(name='perm', actions=['view']))

    def cf_values():
        site = O['site']
        cfs = [
            CustomField.objects.create(name='cf_bool', type='boolean'),
            CustomField.objects.create(name='cf_date', type='date', group_name='G', weight=10),
            CustomField.objects.create(name='cf_json', type='json'),
            CustomField.objects.create(name='cf_url', type='url'),
        ]
        for cf in cfs:
            cf.object_types.set([ct(Site)])
        site.custom_field_data.update({'cf_text_field': 'hello', 'cf_bool': True, 'cf_date': '2024-05-06',
                                       'cf_json': {'a': [1, 2]}})
        site.save()
        return site
    make('cf_values', cf_values)

    def image_attachment():
        return ImageAttachment.objects.create(object_type=ct(Site), object_id=O['site'].pk,
                                              image=f'image-attachments/site_{O["site"].pk}_photo.png',
                                              image_height=10, image_width=20)
    make('imageattachment', image_attachment)
    make('imageattachment2', lambda: ImageAttachment.objects.create(
        object_type=ct(Site), object_id=O['site'].pk, image='image-attachments/other.png', name='Named',
        image_height=10, image_width=20))

    def script():
        from extras.models import ScriptModule, Script
        mod = ScriptModule.objects.create(file_root='scripts', file_path='seed_scripts.py')
        return Script.objects.create(module=mod, name='SeedScript', is_executable=False)
    make('script', script)

    def datafile():
        from core.models import DataFile
        return DataFile.objects.create(source=O['datasource'], path='a/b.txt', last_updated='2024-01-01T00:00:00Z',
                                       size=3, hash='0' * 64, data=b'abc')
    make('datafile', datafile)
    make('vlangroup_ranges', lambda: VLANGroup.objects.create(name='VG2', slug='vg2',
                                                              vid_ranges=[NumericRange(1, 11), NumericRange(20, 31)]))
    make('journal2', lambda: JournalEntry.objects.create(assigned_object=O['device'], kind='warning',
                                                         comments='x'))

    def child_device():
        dt2 = DeviceType.objects.create(manufacturer=O['manufacturer'], model='Blade', slug='blade', u_height=0,
                                        subdevice_role='child')
        O['devicetype'].subdevice_role = 'parent'
        O['devicetype'].save()
        child = Device.objects.create(name='blade1', device_type=dt2, role=O['devicerole'], site=O['site'],
                                      rack=O['rack'])
        bay = O['devicebay']
        bay.installed_device = child
        bay.save()
        return child
    make('child_device', child_device)
    make('service_multi', lambda: Service.objects.create(name='DNS', parent=O['device'],
                                                         port_mappings=['udp/53', 'tcp/53']))

    for k, e in FAILED:
        print('FAILED', k, e)
    print(f'created {len(O)} objects, {len(FAILED)} failures')


if __name__ == '__main__':
    main()
