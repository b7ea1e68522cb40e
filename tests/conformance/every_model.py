"""Every model NetBox 4.7.3 can send events for: create, update and delete one object of each
through the REST API, as a user would (issue 15, point 3).

scenario.py builds the objects its own steps need and then calls `EveryModel.run()`, which

1. creates the event rule `r-every` (webhook `every`) on every object type of `TYPES` (the models
   the main scenario does not reach);
2. creates one object of each, in dependency order (`STEPS`), with tags and a value for custom
   fields of every type where the model has them (`scenario.CF_TYPES` lists the models the
   scenario's custom fields are assigned to);
3. updates each: a plain field (its description, or the field named in `STEPS`), its tags
   (replaced) and some of its custom fields (changed, cleared);
4. deletes each, in the reverse order.

A few objects only serve the others and are kept (`keep`): a device of a new parent device type,
with the interfaces the VPN, wireless, FHRP and virtual circuit objects need. What NetBox cannot
create through REST is listed in `NOT_CREATABLE` with the reason (docs/fidelity.md repeats it).
The bodies are written by hand; the required fields come from NetBox's writable serializers.
"""

import struct
import zlib

# The object types this file reaches (the main scenario reaches the others; MAIN_TYPES).
TYPES = [
    'circuits.circuitgroup', 'circuits.circuitgroupassignment', 'circuits.provideraccount',
    'circuits.providernetwork', 'circuits.virtualcircuit', 'circuits.virtualcircuittermination',
    'circuits.virtualcircuittype',
    'core.datasource',
    'dcim.cablebundle', 'dcim.cabletermination', 'dcim.consoleport', 'dcim.consoleporttemplate',
    'dcim.consoleserverport', 'dcim.consoleserverporttemplate', 'dcim.coolingfeed', 'dcim.coolingintake',
    'dcim.coolingintaketemplate', 'dcim.coolingoutflow', 'dcim.coolingoutflowtemplate', 'dcim.coolingsource',
    'dcim.devicebay', 'dcim.devicebaytemplate', 'dcim.frontporttemplate', 'dcim.interfacetemplate',
    'dcim.inventoryitem', 'dcim.inventoryitemrole', 'dcim.inventoryitemtemplate', 'dcim.module',
    'dcim.modulebay', 'dcim.modulebaytemplate', 'dcim.modulebaytype', 'dcim.moduletype',
    'dcim.moduletypeprofile', 'dcim.powerfeed', 'dcim.poweroutlet', 'dcim.poweroutlettemplate',
    'dcim.powerpanel', 'dcim.powerport', 'dcim.powerporttemplate', 'dcim.rackgroup', 'dcim.rackreservation',
    'dcim.racktype', 'dcim.rearporttemplate', 'dcim.virtualchassis', 'dcim.virtualdevicecontext',
    'extras.configcontextprofile', 'extras.configtemplate', 'extras.customfield',
    'extras.customfieldchoiceset', 'extras.customlink', 'extras.eventrule', 'extras.exporttemplate',
    'extras.imageattachment', 'extras.journalentry', 'extras.notificationgroup', 'extras.savedfilter',
    'extras.tableconfig', 'extras.webhook',
    'ipam.asnrange', 'ipam.fhrpgroup', 'ipam.fhrpgroupassignment', 'ipam.iprange', 'ipam.role',
    'ipam.routetarget', 'ipam.service', 'ipam.servicetemplate', 'ipam.vlantranslationpolicy',
    'ipam.vlantranslationrule',
    'tenancy.contact', 'tenancy.contactassignment', 'tenancy.contactgroup', 'tenancy.contactrole',
    'users.owner', 'users.ownergroup',
    'virtualization.clustergroup', 'virtualization.virtualdisk', 'virtualization.virtualmachinetype',
    'vpn.ikepolicy', 'vpn.ikeproposal', 'vpn.ipsecpolicy', 'vpn.ipsecprofile', 'vpn.ipsecproposal',
    'vpn.l2vpn', 'vpn.l2vpntermination', 'vpn.tunnel', 'vpn.tunnelgroup', 'vpn.tunneltermination',
    'wireless.wirelesslan', 'wireless.wirelesslangroup', 'wireless.wirelesslink',
]

# Models with event rules that this scenario does not create, and why.
NOT_CREATABLE = {
    'extras.script': 'NetBox sends no webhook to compare: the REST API creates scripts only by uploading a '
                     'module (`/api/extras/scripts/upload/`), Script has no change logging so NetBox sends no '
                     '`created` or `updated` event for it, and its worker fails to deliver the `deleted` one '
                     '(the job cannot unpickle a class of an uploaded module: ModuleNotFoundError); tried and '
                     'dropped on NetBox 4.7.3',
}
# Models NetBox enqueues no `created` or `updated` event for: they have no change logging (no
# `to_objectchange`), so NetBox's handler returns early; their `deleted` events are sent.
NOT_CHANGE_LOGGED = {'users.owner', 'users.ownergroup'}

# The models of TYPES whose serializer has `tags` and `custom_fields` (NetBox's serializers)
NO_TAGS = {
    'dcim.cabletermination', 'dcim.consoleporttemplate', 'dcim.consoleserverporttemplate',
    'dcim.powerporttemplate', 'dcim.poweroutlettemplate', 'dcim.coolingintaketemplate',
    'dcim.coolingoutflowtemplate', 'dcim.interfacetemplate', 'dcim.frontporttemplate',
    'dcim.rearporttemplate', 'dcim.modulebaytemplate', 'dcim.devicebaytemplate',
    'dcim.inventoryitemtemplate', 'ipam.fhrpgroupassignment', 'extras.customfield',
    'extras.customfieldchoiceset', 'extras.customlink', 'extras.exporttemplate', 'extras.savedfilter',
    'extras.tableconfig', 'extras.imageattachment', 'extras.notificationgroup', 'users.ownergroup',
    'users.owner',
}
NO_CUSTOM_FIELDS = NO_TAGS | {'extras.configcontextprofile', 'extras.configtemplate'}
# The models of TYPES that the scenario's custom fields (one of every type) are assigned to.
CF_TYPES = sorted(t for t in TYPES if t not in NO_CUSTOM_FIELDS)
# Serializers without `description`: the update changes this field instead.
UPDATE_FIELD = {
    'circuits.circuitgroupassignment': {'priority': 'secondary'},
    'extras.customlink': {'link_text': 'EM link (edited)'},
    'extras.journalentry': {'comments': 'edited', 'kind': 'warning'},
    'ipam.fhrpgroupassignment': {'priority': 200},
    'tenancy.contactassignment': {'priority': 'secondary'},
    'vpn.l2vpntermination': {},
    'vpn.tunneltermination': {'role': 'hub'},
}

def png_1x1():
    """A valid 1x1 PNG (an image attachment's file), made here rather than stored."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b'\x00\xff\x00\x00')  # filter byte, one red pixel
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', pixels) + chunk(b'IEND', b'')


def custom_field_values(ids):
    """A value for each of the scenario's custom fields (every type)."""
    return {
        'cf_text': 'em text', 'cf_integer': 7, 'cf_decimal': 2.5, 'cf_boolean': False,
        'cf_date': '2026-02-28', 'cf_datetime': '2026-02-28T01:02:03Z', 'cf_url': 'https://example.com/em',
        'cf_json': {'z': 1, 'a': [True, None]}, 'cf_select': 'blue', 'cf_multiselect': ['red', 'green'],
        'cf_object': ids['acme'], 'cf_multiobject': [ids['berlin']], 'cf_longtext': 'em\nlong',
    }


CUSTOM_FIELD_CHANGES = {'cf_integer': 8, 'cf_text': None, 'cf_select': 'red', 'cf_multiobject': []}


class EveryModel:
    def __init__(self, scenario):
        self.s = scenario
        self.api = scenario.api
        self.ids = scenario.ids
        # (key, object type, API path) of every object created, in creation order
        self.created = []
        self.kept = set()

    def create(self, key, object_type, body, keep=False):
        path = API_PATHS[object_type]
        if object_type in TYPES and object_type not in NO_TAGS:
            body.setdefault('tags', [{'slug': 'gold'}])
        if object_type in CF_TYPES:
            body.setdefault('custom_fields', custom_field_values(self.ids))
        obj = self.api.post(f'every model: create {object_type}', '/api' + path, body)
        self.ids[key] = obj['id']
        self.created.append((key, object_type, path))
        if keep:
            self.kept.add(key)
        return obj['id']

    def image_attachment(self, key):
        """An image attachment: a multipart upload (the REST API takes the file as a form part)."""
        obj = self.api.upload('every model: create extras.imageattachment', '/api/extras/image-attachments/',
                              {'object_type': 'dcim.site', 'object_id': str(self.ids['berlin']),
                               'name': 'EM image'},
                              {'image': ('em.png', png_1x1(), 'image/png')})
        self.ids[key] = obj['id']
        self.created.append((key, 'extras.imageattachment', '/extras/image-attachments/'))

    def expect_side_effects(self):
        """What NetBox changes with QuerySet.update() inside these REST requests: in capture_mode
        = all netbox-outbox sends `updated` for it, NetBox does not (by design, as for the
        scenario's nbshell QuerySet.update())."""
        e = self.s.expect
        vm = ('virtualization.virtualmachine', self.ids['vm'])
        why = ('NetBox sets the virtual machine\'s disk total with QuerySet.update() when a virtual disk is '
               'created or deleted')
        e.side_effects_all['every model: create virtualization.virtualdisk'] = ([vm], why)
        e.side_effects_all['every model: delete virtualization.virtualdisk'] = ([vm], why)
        e.side_effects_all['every model: delete wireless.wirelesslink'] = (
            [('dcim.interface', self.ids['em-wlan0']), ('dcim.interface', self.ids['em-wlan1'])],
            'NetBox clears the interfaces\' wireless_link with QuerySet.update() when a wireless link is deleted')
        for t in NOT_CHANGE_LOGGED:
            e.not_change_logged[t] = (
                'NetBox sends no created or updated event for a model without change logging (its event '
                'handler returns early); capture_mode = all sends every committed change to a watched table')

    def rule(self):
        self.s.webhook('every')
        self.s.rule('r-every', 'every', TYPES)

    def build(self):
        ids = self.ids
        c = self.create
        # users and tenancy
        c('em-ownergroup', 'users.ownergroup', {'name': 'EM owners', 'description': 'owners'})
        c('em-owner', 'users.owner', {'name': 'EM owner', 'group': ids['em-ownergroup'],
                                      'users': [ids['api-user']]})
        c('em-contactgroup', 'tenancy.contactgroup', {'name': 'EM contacts', 'slug': 'em-contacts'})
        c('em-contactrole', 'tenancy.contactrole', {'name': 'EM role', 'slug': 'em-role'})
        c('em-contact', 'tenancy.contact', {'name': 'EM Contact', 'groups': [ids['em-contactgroup']],
                                            'title': 'Ops', 'phone': '+49 30 1234', 'email': 'em@example.com',
                                            'owner': ids['em-owner']})
        c('em-contactassignment', 'tenancy.contactassignment', {
            'object_type': 'dcim.site', 'object_id': ids['berlin'], 'contact': ids['em-contact'],
            'role': ids['em-contactrole'], 'priority': 'primary'})
        # extras
        c('em-choices', 'extras.customfieldchoiceset', {
            'name': 'EM choices', 'extra_choices': [['x', 'X'], ['y', 'Y']], 'order_alphabetically': True})
        c('em-cf', 'extras.customfield', {
            'name': 'em_select', 'type': 'select', 'object_types': ['dcim.cablebundle'],
            'choice_set': ids['em-choices'], 'label': 'EM select', 'weight': 200})
        c('em-customlink', 'extras.customlink', {
            'object_types': ['dcim.site'], 'name': 'EM link', 'link_text': 'Open {{ object.name }}',
            'link_url': 'https://example.com/{{ object.slug }}', 'new_window': True})
        c('em-exporttemplate', 'extras.exporttemplate', {
            'object_types': ['dcim.site'], 'name': 'EM export',
            'template_code': '{% for s in queryset %}{{ s.name }}\n{% endfor %}', 'file_extension': 'txt'})
        c('em-savedfilter', 'extras.savedfilter', {
            'object_types': ['dcim.site'], 'name': 'EM filter', 'slug': 'em-filter',
            'parameters': {'status': ['active']}, 'shared': True})
        c('em-tableconfig', 'extras.tableconfig', {
            'object_type': 'dcim.site', 'table': 'SiteTable', 'name': 'EM table',
            'columns': ['name', 'status'], 'ordering': ['name'], 'shared': True})
        c('em-notificationgroup', 'extras.notificationgroup', {'name': 'EM group', 'users': [ids['api-user']]})
        c('em-journal', 'extras.journalentry', {
            'assigned_object_type': 'dcim.site', 'assigned_object_id': ids['berlin'], 'kind': 'info',
            'comments': 'a journal entry'})
        self.image_attachment('em-image')
        c('em-ccprofile', 'extras.configcontextprofile', {
            'name': 'EM profile', 'schema': {'type': 'object', 'properties': {'ntp': {'type': 'object'}}}})
        c('em-configtemplate', 'extras.configtemplate', {
            'name': 'EM template', 'template_code': 'hostname {{ device.name }}', 'mime_type': 'text/plain'})
        c('em-webhook', 'extras.webhook', {
            'name': 'em-unused', 'payload_url': self.s.receiver.url('/hook/em-unused'),
            'http_method': 'POST', 'http_content_type': 'application/json'})
        c('em-eventrule', 'extras.eventrule', {
            'name': 'em-rule', 'object_types': ['dcim.cablebundle'], 'event_types': ['object_created'],
            'enabled': False, 'action_type': 'webhook', 'action_object_type': 'extras.webhook',
            'action_object_id': ids['em-webhook']})
        c('em-datasource', 'core.datasource', {
            'name': 'EM local', 'type': 'local', 'source_url': 'file:///tmp', 'enabled': False})
        # circuits
        c('em-circuitgroup', 'circuits.circuitgroup', {'name': 'EM circuits', 'slug': 'em-circuits',
                                                       'tenant': ids['acme']})
        c('em-cga', 'circuits.circuitgroupassignment', {
            'group': ids['em-circuitgroup'], 'member_type': 'circuits.circuit', 'member_id': ids['circuit'],
            'priority': 'primary'})
        c('em-account', 'circuits.provideraccount', {'provider': ids['telco'], 'account': 'ACC-1',
                                                     'name': 'Main account'})
        c('em-pnet', 'circuits.providernetwork', {'provider': ids['telco'], 'name': 'MPLS cloud',
                                                  'service_id': 'SVC-9'})
        c('em-vctype', 'circuits.virtualcircuittype', {'name': 'EVPL', 'slug': 'evpl', 'color': 'aa00aa'})
        c('em-vc', 'circuits.virtualcircuit', {
            'cid': 'VC-1', 'provider_network': ids['em-pnet'], 'type': ids['em-vctype'],
            'provider_account': ids['em-account'], 'status': 'active', 'tenant': ids['acme']})
        # dcim: racks, power, cooling
        c('em-rackgroup', 'dcim.rackgroup', {'name': 'EM row', 'slug': 'em-row'})
        c('em-racktype', 'dcim.racktype', {
            'manufacturer': ids['juniper'], 'model': 'EM 42U', 'slug': 'em-42u', 'form_factor': '4-post-cabinet',
            'width': 19, 'u_height': 42, 'outer_width': 600, 'outer_depth': 1000, 'outer_unit': 'mm',
            'weight': 120.5, 'weight_unit': 'kg'})
        c('em-reservation', 'dcim.rackreservation', {
            'rack': ids['rack'], 'units': [40, 41], 'user': ids['api-user'], 'description': 'reserved',
            'tenant': ids['acme']})
        c('em-powerpanel', 'dcim.powerpanel', {'site': ids['berlin'], 'name': 'PP1', 'location': ids['hall']})
        c('em-powerfeed', 'dcim.powerfeed', {
            'power_panel': ids['em-powerpanel'], 'name': 'Feed A', 'rack': ids['rack'], 'status': 'active',
            'type': 'primary', 'supply': 'ac', 'phase': 'single-phase', 'voltage': 230, 'amperage': 16,
            'max_utilization': 80})
        c('em-coolingsource', 'dcim.coolingsource', {
            'site': ids['berlin'], 'name': 'Chiller 1', 'type': 'chiller', 'cooling_capacity': 150.25})
        c('em-coolingfeed', 'dcim.coolingfeed', {
            'cooling_source': ids['em-coolingsource'], 'name': 'CF1', 'rack': ids['rack'],
            'max_flow': 12.5, 'max_flow_unit': 'lpm'})
        # dcim: modules and a device of a parent device type, with one component of each kind
        c('em-iirole', 'dcim.inventoryitemrole', {'name': 'Fans', 'slug': 'fans', 'color': '0000aa'})
        c('em-mbtype', 'dcim.modulebaytype', {'name': 'MPC slot', 'slug': 'mpc-slot',
                                              'manufacturer': ids['juniper']})
        c('em-mtprofile', 'dcim.moduletypeprofile', {
            'name': 'Line card', 'schema': {'properties': {'ports': {'type': 'integer'}}}})
        c('em-moduletype', 'dcim.moduletype', {
            'manufacturer': ids['juniper'], 'model': 'MPC7E', 'profile': ids['em-mtprofile'],
            'attributes': {'ports': 40}, 'weight': 1.5, 'weight_unit': 'kg', 'part_number': 'MPC7E-10G'})
        c('em-devtype', 'dcim.devicetype', {
            'manufacturer': ids['juniper'], 'model': 'EM chassis', 'slug': 'em-chassis', 'u_height': 2,
            'subdevice_role': 'parent'}, keep=True)
        c('em-dev', 'dcim.device', {'name': 'em-dev', 'device_type': ids['em-devtype'], 'role': ids['router'],
                                    'site': ids['berlin']}, keep=True)
        dev = ids['em-dev']
        for key, name, kind in (('em-vif', 'em-vif0', 'virtual'), ('em-ge0', 'ge-0/0/0', '1000base-t'),
                                ('em-wlan0', 'wlan0', 'ieee802.11ac'), ('em-wlan1', 'wlan1', 'ieee802.11ac')):
            c(key, 'dcim.interface', {'device': dev, 'name': name, 'type': kind}, keep=True)
        c('em-vct', 'circuits.virtualcircuittermination', {
            'virtual_circuit': ids['em-vc'], 'interface': ids['em-vif'], 'role': 'peer'})
        c('em-consoleport', 'dcim.consoleport', {'device': dev, 'name': 'con0', 'type': 'rj-45', 'speed': 9600})
        c('em-csport', 'dcim.consoleserverport', {'device': dev, 'name': 'cs0', 'type': 'rj-45'})
        c('em-powerport', 'dcim.powerport', {'device': dev, 'name': 'PSU0', 'type': 'iec-60320-c14',
                                             'maximum_draw': 500, 'allocated_draw': 250})
        c('em-poweroutlet', 'dcim.poweroutlet', {'device': dev, 'name': 'out0', 'type': 'iec-60320-c13',
                                                 'power_port': ids['em-powerport'], 'feed_leg': 'A'})
        c('em-devicebay', 'dcim.devicebay', {'device': dev, 'name': 'bay0', 'label': 'Bay 0'})
        c('em-modulebay', 'dcim.modulebay', {'device': dev, 'name': 'slot0', 'position': '0'})
        c('em-module', 'dcim.module', {'device': dev, 'module_bay': ids['em-modulebay'],
                                       'module_type': ids['em-moduletype'], 'status': 'active', 'serial': 'M1'})
        c('em-inventory', 'dcim.inventoryitem', {
            'device': dev, 'name': 'fan tray', 'role': ids['em-iirole'], 'manufacturer': ids['juniper'],
            'part_id': 'FT-1', 'component_type': 'dcim.consoleport', 'component_id': ids['em-consoleport']})
        c('em-intake', 'dcim.coolingintake', {'device': dev, 'name': 'intake0', 'type': 'uqd',
                                              'diameter': 12.7, 'diameter_unit': 'mm'})
        c('em-outflow', 'dcim.coolingoutflow', {'device': dev, 'name': 'outflow0', 'type': 'uqd'})
        c('em-vdc', 'dcim.virtualdevicecontext', {'name': 'vdc1', 'device': dev, 'status': 'active',
                                                  'identifier': 1, 'tenant': ids['acme']})
        c('em-vchassis', 'dcim.virtualchassis', {'name': 'EM VC', 'domain': 'em.example.com'})
        c('em-bundle', 'dcim.cablebundle', {'name': 'EM bundle', 'custom_fields': {
            **custom_field_values(ids), 'em_select': 'y'}})
        # a cable between the console ports: its two cable terminations (dcim.cabletermination)
        c('em-cable', 'dcim.cable', {
            'a_terminations': [{'object_type': 'dcim.consoleport', 'object_id': ids['em-consoleport']}],
            'b_terminations': [{'object_type': 'dcim.consoleserverport', 'object_id': ids['em-csport']}],
            'status': 'connected', 'bundle': ids['em-bundle'], 'label': 'EM-C1'})
        # dcim: component templates, on the new device type (after its device: not instantiated)
        dt = ids['em-devtype']
        c('em-cpt', 'dcim.consoleporttemplate', {'device_type': dt, 'name': 'con0', 'type': 'rj-45'})
        c('em-cspt', 'dcim.consoleserverporttemplate', {'device_type': dt, 'name': 'cs0', 'type': 'rj-45'})
        c('em-ppt', 'dcim.powerporttemplate', {'device_type': dt, 'name': 'PSU0', 'type': 'iec-60320-c14',
                                               'maximum_draw': 500})
        c('em-pot', 'dcim.poweroutlettemplate', {'device_type': dt, 'name': 'out0', 'type': 'iec-60320-c13',
                                                 'power_port': ids['em-ppt'], 'feed_leg': 'B'})
        c('em-ift', 'dcim.interfacetemplate', {'device_type': dt, 'name': 'ge-0/0/{module}', 'type': '1000base-t',
                                               'mgmt_only': True})
        c('em-rpt', 'dcim.rearporttemplate', {'device_type': dt, 'name': 'rp0', 'type': '8p8c', 'positions': 2})
        c('em-fpt', 'dcim.frontporttemplate', {
            'device_type': dt, 'name': 'fp0', 'type': '8p8c',
            'rear_ports': [{'position': 1, 'rear_port': ids['em-rpt'], 'rear_port_position': 2}]})
        c('em-dbt', 'dcim.devicebaytemplate', {'device_type': dt, 'name': 'bay0'})
        c('em-mbt', 'dcim.modulebaytemplate', {'device_type': dt, 'name': 'slot0', 'position': '0'})
        c('em-iit', 'dcim.inventoryitemtemplate', {'device_type': dt, 'name': 'fan tray',
                                                   'manufacturer': ids['juniper'], 'role': ids['em-iirole']})
        c('em-cit', 'dcim.coolingintaketemplate', {'device_type': dt, 'name': 'intake0', 'type': 'uqd'})
        c('em-cot', 'dcim.coolingoutflowtemplate', {'device_type': dt, 'name': 'outflow0'})
        # ipam
        c('em-ipamrole', 'ipam.role', {'name': 'Loopbacks', 'slug': 'loopbacks', 'weight': 500})
        c('em-rt', 'ipam.routetarget', {'name': '65000:100', 'tenant': ids['acme']})
        c('em-asnrange', 'ipam.asnrange', {'name': 'Private', 'slug': 'private', 'rir': ids['rir'],
                                           'start': 4200000100, 'end': 4200000199})
        c('em-iprange', 'ipam.iprange', {'start_address': '192.0.2.100/24', 'end_address': '192.0.2.150/24',
                                         'status': 'active', 'role': ids['em-ipamrole'],
                                         'mark_utilized': True})
        c('em-fhrp', 'ipam.fhrpgroup', {'protocol': 'vrrp2', 'group_id': 10, 'name': 'VRRP 10',
                                        'auth_type': 'plaintext', 'auth_key': 'k3y'})
        c('em-fhrpa', 'ipam.fhrpgroupassignment', {'group': ids['em-fhrp'], 'interface_type': 'dcim.interface',
                                                   'interface_id': ids['em-ge0'], 'priority': 100})
        c('em-svctemplate', 'ipam.servicetemplate', {'name': 'ssh', 'protocol': 'tcp', 'ports': [22]})
        c('em-service', 'ipam.service', {'parent_object_type': 'dcim.device', 'parent_object_id': dev,
                                         'name': 'ssh', 'protocol': 'tcp', 'ports': [22, 2222]})
        c('em-vtpolicy', 'ipam.vlantranslationpolicy', {'name': 'EM policy'})
        c('em-vtrule', 'ipam.vlantranslationrule', {'policy': ids['em-vtpolicy'], 'local_vid': 100,
                                                    'remote_vid': 200})
        # virtualization
        c('em-clustergroup', 'virtualization.clustergroup', {'name': 'EM clusters', 'slug': 'em-clusters'})
        c('em-vmtype', 'virtualization.virtualmachinetype', {'name': 'Small', 'slug': 'small',
                                                             'default_vcpus': 2, 'default_memory': 2048})
        c('em-vdisk', 'virtualization.virtualdisk', {'virtual_machine': ids['vm'], 'name': 'disk0', 'size': 50})
        # vpn
        c('em-ikeproposal', 'vpn.ikeproposal', {
            'name': 'IKE AES', 'authentication_method': 'preshared-keys', 'encryption_algorithm': 'aes-128-cbc',
            'authentication_algorithm': 'hmac-sha256', 'group': 14, 'sa_lifetime': 3600})
        c('em-ikepolicy', 'vpn.ikepolicy', {'name': 'IKE v2', 'version': 2, 'proposals': [ids['em-ikeproposal']],
                                            'preshared_key': 'psk'})
        c('em-ipsecproposal', 'vpn.ipsecproposal', {
            'name': 'ESP AES', 'encryption_algorithm': 'aes-256-cbc', 'authentication_algorithm': 'hmac-sha256',
            'sa_lifetime_seconds': 3600, 'sa_lifetime_data': 100000})
        c('em-ipsecpolicy', 'vpn.ipsecpolicy', {'name': 'IPsec', 'proposals': [ids['em-ipsecproposal']],
                                                'pfs_group': 14})
        c('em-ipsecprofile', 'vpn.ipsecprofile', {'name': 'EM IPsec', 'mode': 'esp',
                                                  'ike_policy': ids['em-ikepolicy'],
                                                  'ipsec_policy': ids['em-ipsecpolicy']})
        c('em-tunnelgroup', 'vpn.tunnelgroup', {'name': 'EM tunnels', 'slug': 'em-tunnels'})
        c('em-tunnel', 'vpn.tunnel', {'name': 'tun0', 'status': 'active', 'encapsulation': 'ipsec-tunnel',
                                      'group': ids['em-tunnelgroup'], 'ipsec_profile': ids['em-ipsecprofile'],
                                      'tunnel_id': 42, 'tenant': ids['acme']})
        c('em-tunnelterm', 'vpn.tunneltermination', {'tunnel': ids['em-tunnel'], 'role': 'peer',
                                                     'termination_type': 'dcim.interface',
                                                     'termination_id': ids['em-ge0']})
        c('em-l2vpn', 'vpn.l2vpn', {'name': 'EM VXLAN', 'slug': 'em-vxlan', 'type': 'vxlan', 'identifier': 10010,
                                    'import_targets': [ids['em-rt']], 'tenant': ids['acme']})
        c('em-l2vpnterm', 'vpn.l2vpntermination', {'l2vpn': ids['em-l2vpn'], 'assigned_object_type': 'ipam.vlan',
                                                   'assigned_object_id': ids['vlan200']})
        # wireless
        c('em-wlangroup', 'wireless.wirelesslangroup', {'name': 'EM wifi', 'slug': 'em-wifi'})
        c('em-wlan', 'wireless.wirelesslan', {'ssid': 'em-wifi', 'group': ids['em-wlangroup'], 'status': 'active',
                                              'auth_type': 'wpa-personal', 'auth_cipher': 'aes',
                                              'auth_psk': 'passphrase'})
        c('em-wlink', 'wireless.wirelesslink', {'interface_a': ids['em-wlan0'], 'interface_b': ids['em-wlan1'],
                                                'ssid': 'em-link', 'status': 'connected'})

    def update(self):
        for key, object_type, path in self.created:
            if key in self.kept or object_type not in TYPES:
                continue
            body = dict(UPDATE_FIELD.get(object_type, {'description': f'{object_type} (edited)'}))
            if object_type == 'extras.imageattachment':
                # NetBox 4.7.3's serializer validates the parent object even on a PATCH that does
                # not change it (a KeyError, HTTP 500, without them)
                body.update({'object_type': 'dcim.site', 'object_id': self.ids['berlin'], 'name': 'EM image 2'})
            if object_type not in NO_TAGS:
                body['tags'] = [{'slug': 'bronze'}, {'slug': 'gold'}]
            if object_type in CF_TYPES:
                body['custom_fields'] = dict(CUSTOM_FIELD_CHANGES)
            self.api.patch(f'every model: update {object_type}', f'/api{path}{self.ids[key]}/', body)

    def teardown(self):
        for key, object_type, path in reversed(self.created):
            if key in self.kept:
                continue
            self.api.delete(f'every model: delete {object_type}', f'/api{path}{self.ids[key]}/')

    def run(self):
        self.ids['api-user'] = self.api.get('/api/users/users/?username=conformance')['results'][0]['id']
        self.rule()
        self.build()
        self.update()
        self.teardown()
        self.expect_side_effects()


API_PATHS = {
    'circuits.circuitgroup': '/circuits/circuit-groups/',
    'circuits.circuitgroupassignment': '/circuits/circuit-group-assignments/',
    'circuits.provideraccount': '/circuits/provider-accounts/',
    'circuits.providernetwork': '/circuits/provider-networks/',
    'circuits.virtualcircuit': '/circuits/virtual-circuits/',
    'circuits.virtualcircuittermination': '/circuits/virtual-circuit-terminations/',
    'circuits.virtualcircuittype': '/circuits/virtual-circuit-types/',
    'core.datasource': '/core/data-sources/',
    'dcim.cable': '/dcim/cables/',
    'dcim.cablebundle': '/dcim/cable-bundles/',
    'dcim.consoleport': '/dcim/console-ports/',
    'dcim.consoleporttemplate': '/dcim/console-port-templates/',
    'dcim.consoleserverport': '/dcim/console-server-ports/',
    'dcim.consoleserverporttemplate': '/dcim/console-server-port-templates/',
    'dcim.coolingfeed': '/dcim/cooling-feeds/',
    'dcim.coolingintake': '/dcim/cooling-intakes/',
    'dcim.coolingintaketemplate': '/dcim/cooling-intake-templates/',
    'dcim.coolingoutflow': '/dcim/cooling-outflows/',
    'dcim.coolingoutflowtemplate': '/dcim/cooling-outflow-templates/',
    'dcim.coolingsource': '/dcim/cooling-sources/',
    'dcim.device': '/dcim/devices/',
    'dcim.devicebay': '/dcim/device-bays/',
    'dcim.devicebaytemplate': '/dcim/device-bay-templates/',
    'dcim.devicetype': '/dcim/device-types/',
    'dcim.frontporttemplate': '/dcim/front-port-templates/',
    'dcim.interface': '/dcim/interfaces/',
    'dcim.interfacetemplate': '/dcim/interface-templates/',
    'dcim.inventoryitem': '/dcim/inventory-items/',
    'dcim.inventoryitemrole': '/dcim/inventory-item-roles/',
    'dcim.inventoryitemtemplate': '/dcim/inventory-item-templates/',
    'dcim.module': '/dcim/modules/',
    'dcim.modulebay': '/dcim/module-bays/',
    'dcim.modulebaytemplate': '/dcim/module-bay-templates/',
    'dcim.modulebaytype': '/dcim/module-bay-types/',
    'dcim.moduletype': '/dcim/module-types/',
    'dcim.moduletypeprofile': '/dcim/module-type-profiles/',
    'dcim.powerfeed': '/dcim/power-feeds/',
    'dcim.poweroutlet': '/dcim/power-outlets/',
    'dcim.poweroutlettemplate': '/dcim/power-outlet-templates/',
    'dcim.powerpanel': '/dcim/power-panels/',
    'dcim.powerport': '/dcim/power-ports/',
    'dcim.powerporttemplate': '/dcim/power-port-templates/',
    'dcim.rackgroup': '/dcim/rack-groups/',
    'dcim.rackreservation': '/dcim/rack-reservations/',
    'dcim.racktype': '/dcim/rack-types/',
    'dcim.rearporttemplate': '/dcim/rear-port-templates/',
    'dcim.virtualchassis': '/dcim/virtual-chassis/',
    'dcim.virtualdevicecontext': '/dcim/virtual-device-contexts/',
    'extras.configcontextprofile': '/extras/config-context-profiles/',
    'extras.configtemplate': '/extras/config-templates/',
    'extras.customfield': '/extras/custom-fields/',
    'extras.customfieldchoiceset': '/extras/custom-field-choice-sets/',
    'extras.customlink': '/extras/custom-links/',
    'extras.eventrule': '/extras/event-rules/',
    'extras.exporttemplate': '/extras/export-templates/',
    'extras.imageattachment': '/extras/image-attachments/',
    'extras.journalentry': '/extras/journal-entries/',
    'extras.notificationgroup': '/extras/notification-groups/',
    'extras.savedfilter': '/extras/saved-filters/',
    'extras.tableconfig': '/extras/table-configs/',
    'extras.webhook': '/extras/webhooks/',
    'ipam.asnrange': '/ipam/asn-ranges/',
    'ipam.fhrpgroup': '/ipam/fhrp-groups/',
    'ipam.fhrpgroupassignment': '/ipam/fhrp-group-assignments/',
    'ipam.iprange': '/ipam/ip-ranges/',
    'ipam.role': '/ipam/roles/',
    'ipam.routetarget': '/ipam/route-targets/',
    'ipam.service': '/ipam/services/',
    'ipam.servicetemplate': '/ipam/service-templates/',
    'ipam.vlantranslationpolicy': '/ipam/vlan-translation-policies/',
    'ipam.vlantranslationrule': '/ipam/vlan-translation-rules/',
    'tenancy.contact': '/tenancy/contacts/',
    'tenancy.contactassignment': '/tenancy/contact-assignments/',
    'tenancy.contactgroup': '/tenancy/contact-groups/',
    'tenancy.contactrole': '/tenancy/contact-roles/',
    'users.owner': '/users/owners/',
    'users.ownergroup': '/users/owner-groups/',
    'virtualization.clustergroup': '/virtualization/cluster-groups/',
    'virtualization.virtualdisk': '/virtualization/virtual-disks/',
    'virtualization.virtualmachinetype': '/virtualization/virtual-machine-types/',
    'vpn.ikepolicy': '/vpn/ike-policies/',
    'vpn.ikeproposal': '/vpn/ike-proposals/',
    'vpn.ipsecpolicy': '/vpn/ipsec-policies/',
    'vpn.ipsecprofile': '/vpn/ipsec-profiles/',
    'vpn.ipsecproposal': '/vpn/ipsec-proposals/',
    'vpn.l2vpn': '/vpn/l2vpns/',
    'vpn.l2vpntermination': '/vpn/l2vpn-terminations/',
    'vpn.tunnel': '/vpn/tunnels/',
    'vpn.tunnelgroup': '/vpn/tunnel-groups/',
    'vpn.tunneltermination': '/vpn/tunnel-terminations/',
    'wireless.wirelesslan': '/wireless/wireless-lans/',
    'wireless.wirelesslangroup': '/wireless/wireless-lan-groups/',
    'wireless.wirelesslink': '/wireless/wireless-links/',
}
