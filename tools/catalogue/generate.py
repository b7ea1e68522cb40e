#!/usr/bin/env python3
"""
Generate the netbox-outbox model catalogue from a live NetBox installation.

Run with the NetBox virtualenv's interpreter, e.g.:

    NETBOX_ROOT=/root/.cache/nbo/instance \
        /root/.cache/nbo/venv-4.7.3/bin/python tools/catalogue/generate.py \
        > src/netbox/catalogue/netbox-4.7.3.json

The script only reads from the database (object types and content types). It
never writes. See tools/catalogue/README.md for the schema of the output.
"""

import hashlib
import inspect
import json
import os
import re
import sys
import textwrap
from collections import OrderedDict

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')
if 'NETBOX_ROOT' not in os.environ:
    sys.stderr.write('warning: NETBOX_ROOT is not set; NetBox will look for /opt/netbox/conf/configuration.py\n')

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.contenttypes.fields import GenericForeignKey, GenericRelation  # noqa: E402
from django.contrib.postgres import fields as pg_fields  # noqa: E402
from django.db import models  # noqa: E402
from django.db.models.expressions import OrderBy, F  # noqa: E402
from django.urls import NoReverseMatch, reverse  # noqa: E402
from django.utils import translation  # noqa: E402
from rest_framework import fields as drf_fields  # noqa: E402
from rest_framework import relations as drf_relations  # noqa: E402
from rest_framework import serializers as drf_serializers  # noqa: E402

import netbox  # noqa: E402,F401
from core.models import ObjectType  # noqa: E402
from extras.api.customfields import CustomFieldsDataField  # noqa: E402
from netbox.api.fields import (  # noqa: E402
    AttributesField, ChoiceField, ContentTypeField, IntegerRangeSerializer, RelatedObjectCountField,
    SerializedPKRelatedField,
)
from netbox.api.gfk_fields import GFKSerializerField  # noqa: E402
from netbox.api.serializers import BaseModelSerializer  # noqa: E402
from netbox.api.serializers.fields import (  # noqa: E402
    NetBoxAPIHyperlinkedIdentityField, NetBoxURLHyperlinkedIdentityField,
)
from netbox.api.serializers.generic import GenericObjectSerializer  # noqa: E402
from netbox.api.serializers.nested import NestedTagSerializer  # noqa: E402
from utilities.api import get_serializer_for_model  # noqa: E402
from utilities.choices import ChoiceSet  # noqa: E402
from utilities.views import get_viewname  # noqa: E402

try:
    from ipam.api.field_serializers import IPAddressField as DRFIPAddressField, IPNetworkField as DRFIPNetworkField
except ImportError:  # pragma: no cover
    DRFIPAddressField = DRFIPNetworkField = ()
try:
    from timezone_field.rest_framework import TimeZoneSerializerField
except ImportError:  # pragma: no cover
    TimeZoneSerializerField = ()
try:
    from ipam.fields import IPAddressField as ModelIPAddressField, IPNetworkField as ModelIPNetworkField
except ImportError:  # pragma: no cover
    ModelIPAddressField = ModelIPNetworkField = ()
try:
    from dcim.fields import MACAddressField as ModelMACAddressField
except ImportError:  # pragma: no cover
    ModelMACAddressField = ()
try:
    from timezone_field import TimeZoneField as ModelTimeZoneField
except ImportError:  # pragma: no cover
    ModelTimeZoneField = ()
from taggit.managers import TaggableManager  # noqa: E402

SOURCE_HINT_LINES = 20
WARNINGS = []


def warn(msg):
    WARNINGS.append(msg)
    sys.stderr.write(f'warning: {msg}\n')


def label_of(model):
    return model._meta.label_lower


def text(value):
    """Force lazy translation strings to plain str."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def source_of(obj, max_lines=None):
    try:
        src = textwrap.dedent(inspect.getsource(obj)).strip('\n')
    except (OSError, TypeError):
        return None
    lines = [line.rstrip() for line in src.splitlines()]
    # Drop decorators such as @extend_schema_field(...) / @property / @cached_property
    while lines and lines[0].lstrip().startswith('@'):
        lines.pop(0)
    if max_lines and len(lines) > max_lines:
        lines = lines[:max_lines] + ['...']
    return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Choice sets
# ---------------------------------------------------------------------------

CHOICES = {}            # key -> [[value, label], ...]
_CHOICE_KEYS = {}       # tuple(flattened) -> key


def flatten_choices(choices):
    out = []
    for k, v in choices:
        if isinstance(v, (list, tuple)):
            for k2, v2 in v:
                out.append([k2, text(v2)])
        else:
            out.append([k, text(v)])
    return out


def _all_choicesets():
    seen = []
    stack = list(ChoiceSet.__subclasses__())
    while stack:
        c = stack.pop()
        if c not in seen:
            seen.append(c)
            stack.extend(c.__subclasses__())
    return seen


def register_choices(choices, fallback_key):
    """
    Record a choice list in the top-level "choices" map and return its key. The key is the ChoiceSet class name
    when the choices come from a ChoiceSet class (or match one exactly); otherwise `fallback_key`.
    """
    if isinstance(choices, type) and issubclass(choices, ChoiceSet):
        key = choices.__name__
        flat = flatten_choices(list(choices))
    else:
        flat = flatten_choices(list(choices))
        key = None
        # Try to identify a ChoiceSet class with exactly the same content
        frozen = json.dumps(flat)
        for cs in sorted(_all_choicesets(), key=lambda c: (c.__module__, c.__name__)):
            try:
                if json.dumps(flatten_choices(list(cs))) == frozen:
                    key = cs.__name__
                    break
            except Exception:
                continue
        if key is None:
            key = fallback_key
    frozen = json.dumps(flat)
    if key in CHOICES and json.dumps(CHOICES[key]) != frozen:
        # Same class name with different content (e.g. two apps): disambiguate deterministically
        key = f'{key}@{hashlib.sha1(frozen.encode()).hexdigest()[:8]}'
    CHOICES[key] = flat
    return key


# ---------------------------------------------------------------------------
# Model field formats (snapshot side and value side)
# ---------------------------------------------------------------------------

def model_field_format(field):
    """
    Return a dict describing how a concrete model field's value looks (format and extra keys).
    """
    if isinstance(field, (models.ForeignKey, models.OneToOneField)):
        target = field.target_field
        d = model_field_format(target)
        return d
    if ModelIPAddressField and isinstance(field, ModelIPAddressField):
        return {'format': 'inet'}
    if ModelIPNetworkField and isinstance(field, ModelIPNetworkField):
        return {'format': 'cidr'}
    if ModelMACAddressField and isinstance(field, ModelMACAddressField):
        return {'format': 'mac'}
    if ModelTimeZoneField and isinstance(field, ModelTimeZoneField):
        return {'format': 'timezone'}
    if isinstance(field, pg_fields.ArrayField):
        inner = model_field_format(field.base_field)
        d = {'format': 'array', 'item_format': inner['format']}
        for k, v in inner.items():
            if k != 'format':
                d['item_' + k] = v
        return d
    if isinstance(field, pg_fields.RangeField):
        base = field.base_field
        base_fmt = model_field_format(base() if isinstance(base, type) else base)['format']
        return {'format': 'range', 'range_item_format': base_fmt}
    if isinstance(field, models.JSONField):
        return {'format': 'json'}
    if isinstance(field, models.DecimalField):
        return {'format': 'decimal', 'scale': field.decimal_places, 'max_digits': field.max_digits}
    if isinstance(field, models.BooleanField):
        return {'format': 'bool'}
    if isinstance(field, models.DateTimeField):
        return {'format': 'datetime'}
    if isinstance(field, models.DateField):
        return {'format': 'date'}
    if isinstance(field, models.TimeField):
        return {'format': 'time'}
    if isinstance(field, models.DurationField):
        return {'format': 'duration'}
    if isinstance(field, models.UUIDField):
        return {'format': 'uuid'}
    if isinstance(field, models.FloatField):
        return {'format': 'float'}
    if isinstance(field, (models.IntegerField, models.AutoField, models.BigAutoField, models.SmallAutoField)):
        return {'format': 'int'}
    if isinstance(field, models.FileField):
        return {'format': 'file'}
    if isinstance(field, models.BinaryField):
        return {'format': 'binary'}
    if isinstance(field, models.FilePathField):
        return {'format': 'str'}
    if isinstance(field, (models.CharField, models.TextField)):
        return {'format': 'str'}
    # Fall back on the database type
    internal = field.get_internal_type()
    if internal in ('PositiveBigIntegerField', 'PositiveIntegerField', 'PositiveSmallIntegerField',
                    'BigIntegerField', 'SmallIntegerField', 'IntegerField'):
        return {'format': 'int'}
    if internal in ('CharField', 'TextField', 'SlugField'):
        return {'format': 'str'}
    warn(f'unknown model field format: {field.model._meta.label_lower}.{field.name} ({type(field).__name__})')
    return {'format': 'unknown', 'class': type(field).__name__}


def m2m_through(field):
    through = field.remote_field.through
    return OrderedDict([
        ('table', through._meta.db_table),
        ('source_column', field.m2m_column_name()),
        ('target_column', field.m2m_reverse_name()),
    ])


def ordering_spec(model):
    """
    The model's Meta.ordering rendered as a list of {"field", "column", "desc", "nulls"} entries.
    """
    from utilities.query_functions import CollateAsChar
    out = []
    for item in model._meta.ordering or []:
        desc = False
        nulls = None
        collate = None
        if isinstance(item, CollateAsChar) and len(item.source_expressions) == 1 and \
                isinstance(item.source_expressions[0], F):
            collate = 'C'
            item = item.source_expressions[0]
        if isinstance(item, OrderBy):
            desc = item.descending
            if item.nulls_first:
                nulls = 'first'
            elif item.nulls_last:
                nulls = 'last'
            expr = item.expression
            name = expr.name if isinstance(expr, F) else str(expr)
        elif isinstance(item, F):
            name = item.name
        else:
            name = str(item)
            if name.startswith('-'):
                desc = True
                name = name[1:]
        column = None
        fk_model = None
        join = None
        if name == 'pk':
            column = model._meta.pk.column
        else:
            base, _, rest = name.partition('__')
            try:
                f = model._meta.get_field(base)
            except Exception:
                f = None
            if f is not None and getattr(f, 'concrete', False):
                if not rest:
                    column = f.column
                    if f.is_relation:
                        fk_model = label_of(f.related_model)
                elif f.is_relation and rest in ('id', 'pk'):
                    column = f.column
                elif f.is_relation and '__' not in rest:
                    try:
                        rf = f.related_model._meta.get_field(rest)
                    except Exception:
                        rf = None
                    if rf is not None and getattr(rf, 'concrete', False):
                        column = f.column
                        join = OrderedDict([('table', f.related_model._meta.db_table),
                                            ('pk_column', f.related_model._meta.pk.column),
                                            ('column', rf.column)])
        entry = OrderedDict([('field', name), ('column', column), ('desc', desc)])
        if join:
            # order by join.column of the row of join.table whose pk is in `column`
            entry['join'] = join
        if nulls:
            entry['nulls'] = nulls
        if collate:
            entry['collate'] = collate
        if fk_model:
            # Django orders by a relation through the related model's own Meta.ordering, not by the raw id
            entry['fk_model'] = fk_model
        out.append(entry)
    return out


# ---------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------

def api_path(model):
    """
    The REST detail path with the pk cut off (what NetBoxAPIHyperlinkedIdentityField produces, minus "<pk>/").
    For NetBox's routers this equals reverse('<app>-api:<model>-list').
    """
    try:
        url = reverse(get_viewname(model, action='detail', rest_api=True), kwargs={'pk': 1})
    except NoReverseMatch:
        return None
    if not url.endswith('/1/'):
        warn(f'unexpected API path shape for {label_of(model)}: {url}')
        return None
    list_url = None
    try:
        list_url = reverse(get_viewname(model, action='list', rest_api=True))
    except NoReverseMatch:
        pass
    if list_url != url[:-2]:
        warn(f'API list path {list_url} differs from detail path {url} for {label_of(model)}')
    return url[:-2]


def ui_path(model):
    try:
        url = reverse(get_viewname(model), kwargs={'pk': 1})
    except NoReverseMatch:
        return None
    if not url.endswith('/1/'):
        warn(f'unexpected UI path shape for {label_of(model)}: {url}')
        return None
    return url[:-2]


# ---------------------------------------------------------------------------
# Serializer field classification
# ---------------------------------------------------------------------------

class Catalogue:
    def __init__(self):
        self.pending = []           # models still to describe
        self.known = set()          # labels queued or described
        self.entries = {}           # label -> entry
        self.variants = {}          # label -> {variant key: [field specs]}
        self.gfk_targets = {}       # (model label, gfk name) -> [labels]

    def want(self, model):
        lbl = label_of(model)
        if lbl not in self.known:
            self.known.add(lbl)
            self.pending.append(model)
        return lbl


CAT = Catalogue()


def resolve_model_attr(model, source):
    """
    Return (kind, obj) for an attribute name on a model:
      ('field', <concrete field>), ('m2m', <ManyToManyField>), ('reverse', <ForeignObjectRel>),
      ('generic_relation', <GenericRelation>), ('gfk', <GenericForeignKey>), ('property', <property>),
      ('method', <function>), ('annotation', None)
    """
    try:
        f = model._meta.get_field(source)
    except Exception:
        f = None
    if f is not None:
        if isinstance(f, GenericForeignKey):
            return 'gfk', f
        if isinstance(f, GenericRelation):
            return 'generic_relation', f
        if isinstance(f, TaggableManager):
            return 'tags', f
        if f.many_to_many and not f.auto_created:
            return 'm2m', f
        if f.auto_created and not f.concrete:
            return 'reverse', f
        if f.concrete:
            return 'field', f
    attr = inspect.getattr_static(model, source, None)
    if attr is None:
        return 'annotation', None
    if isinstance(attr, property):
        return 'property', attr
    if hasattr(attr, 'func') and hasattr(attr, 'attrname'):  # functools.cached_property
        return 'property', attr
    if callable(attr):
        return 'method', attr
    return 'attribute', attr


def attr_source_hint(model, source):
    kind, obj = resolve_model_attr(model, source)
    if kind == 'property':
        fn = obj.fget if isinstance(obj, property) else obj.func
        return source_of(fn, SOURCE_HINT_LINES)
    if kind == 'method':
        return source_of(obj, SOURCE_HINT_LINES)
    return None


def nested_reference(f, target_model):
    """
    Describe how a nested serializer instance renders its target: nothing extra (default brief),
    "fields" (canonical serializer restricted to fields=...), or "variant" (another serializer class).
    """
    CAT.want(target_model)
    out = OrderedDict()
    canonical = get_serializer_for_model(target_model)
    if type(f) is canonical and isinstance(f, BaseModelSerializer):
        brief = getattr(canonical.Meta, 'brief_fields', None)
        include = f._include_fields
        omit = f._omit_fields
        if f.nested and not omit and (include is None or tuple(include) == tuple(brief or ())):
            return out
        out['fields'] = list(f.fields.keys())
        return out
    # A different serializer class: record it as a variant on the target model
    specs = [classify(name, sub, target_model, type(f)) for name, sub in readable_fields(f)]
    key = type(f).__name__
    if isinstance(f, BaseModelSerializer) and f._include_fields and tuple(f._include_fields) != tuple(
            getattr(type(f).Meta, 'brief_fields', ()) or ()):
        key += '[' + ','.join(f.fields.keys()) + ']'
    variants = CAT.variants.setdefault(label_of(target_model), {})
    if key in variants and json.dumps(variants[key]) != json.dumps(specs):
        key += '#' + hashlib.sha1(json.dumps(specs).encode()).hexdigest()[:8]
    variants[key] = specs
    out['variant'] = key
    return out


def readable_fields(serializer):
    return [(name, f) for name, f in serializer.fields.items() if not f.write_only]


def value_format_from_drf(f, model_field=None):
    """Format of a scalar DRF field, refined by the model field when there is one."""
    if isinstance(f, ChoiceField):
        return None
    if DRFIPAddressField and isinstance(f, DRFIPAddressField):
        return {'format': 'inet'}
    if DRFIPNetworkField and isinstance(f, DRFIPNetworkField):
        return {'format': 'cidr'}
    if TimeZoneSerializerField and isinstance(f, TimeZoneSerializerField):
        return {'format': 'timezone'}
    if isinstance(f, drf_serializers.ModelField):
        return model_field_format(f.model_field)
    if isinstance(f, (drf_fields.ImageField, drf_fields.FileField)):
        return {'format': 'file_url', 'media_url': settings.MEDIA_URL}
    if isinstance(f, (AttributesField, drf_fields.JSONField)):
        return {'format': 'json'}
    if isinstance(f, drf_fields.DecimalField):
        d = {'format': 'decimal', 'scale': f.decimal_places, 'max_digits': f.max_digits}
        coerce = getattr(f, 'coerce_to_string', None)
        if coerce is None:
            from rest_framework.settings import api_settings
            coerce = api_settings.COERCE_DECIMAL_TO_STRING
        d['coerce_to_string'] = bool(coerce)
        return d
    if isinstance(f, drf_fields.BooleanField):
        return {'format': 'bool'}
    if isinstance(f, drf_fields.DateTimeField):
        return {'format': 'datetime'}
    if isinstance(f, drf_fields.DateField):
        return {'format': 'date'}
    if isinstance(f, drf_fields.TimeField):
        return {'format': 'time'}
    if isinstance(f, drf_fields.DurationField):
        return {'format': 'duration'}
    if isinstance(f, drf_fields.UUIDField):
        return {'format': 'uuid'}
    if isinstance(f, drf_fields.FloatField):
        return {'format': 'float'}
    if isinstance(f, drf_fields.IntegerField):
        return {'format': 'int'}
    if isinstance(f, drf_fields.ListField):
        child = f.child
        if isinstance(child, IntegerRangeSerializer):
            return {'format': 'array', 'item_format': 'int_range'}
        inner_mf = model_field.base_field if isinstance(model_field, pg_fields.ArrayField) else None
        if isinstance(child, drf_fields.ChoiceField) and not isinstance(child, ChoiceField):
            inner = {'format': 'str'}
            if child.choices:
                inner['choices'] = register_choices(
                    [(k, v) for k, v in child.choices.items()], f'{f.field_name}')
        else:
            inner = value_format_from_drf(child, inner_mf) or (
                model_field_format(inner_mf) if inner_mf is not None else {'format': 'unknown'})
        d = {'format': 'array', 'item_format': inner['format']}
        for k, v in inner.items():
            if k != 'format':
                d['item_' + k] = v
        return d
    if isinstance(f, drf_fields.DictField):
        return {'format': 'json'}
    if isinstance(f, drf_fields.CharField):  # includes Slug, Email, URL, Regex, IPAddress(drf)
        return {'format': 'str'}
    if isinstance(f, drf_relations.PrimaryKeyRelatedField):
        return {'format': 'int'}
    if isinstance(f, drf_fields.ReadOnlyField) and model_field is not None:
        return model_field_format(model_field)
    return None


def shape_of(name, f, model, serializer_cls):
    shape = _shape_of(name, f, model, serializer_cls)
    out = OrderedDict([('name', name)])
    out.update(shape)
    return out


def _shape_of(name, f, model, serializer_cls):
    """
    Classify the rendering shape of a DRF field irrespective of where its value comes from. Returns a dict
    with at least "kind". Kinds here: value, choice, nested, nested_many, content_type, content_types, gfk,
    generic_objects, pk_list, slug_list, mapping_list, unknown.
    """
    if isinstance(f, ChoiceField):
        key = register_choices(f.choiceset, f'{label_of(model)}.{name}')
        return {'kind': 'choice', 'choices': key}
    if isinstance(f, ContentTypeField):
        return {'kind': 'content_type'}
    if isinstance(f, GFKSerializerField):
        return {'kind': 'gfk'}
    if isinstance(f, drf_relations.ManyRelatedField):
        child = f.child_relation
        if isinstance(child, ContentTypeField):
            return {'kind': 'content_types'}
        if isinstance(child, SerializedPKRelatedField):
            target = child.serializer.Meta.model
            inst = child.serializer(nested=child.nested, context={'request': None})
            ref = nested_reference(inst, target)
            return OrderedDict([('kind', 'nested_many'), ('model', label_of(target))] + list(ref.items()))
        if isinstance(child, drf_relations.SlugRelatedField):
            target = child.queryset.model
            CAT.want(target)
            return {'kind': 'slug_list', 'model': label_of(target), 'as': child.slug_field}
        if isinstance(child, drf_relations.PrimaryKeyRelatedField):
            target = child.queryset.model if child.queryset is not None else None
            return {'kind': 'pk_list', 'model': label_of(target) if target else None}
        return {'kind': 'unknown', 'class': f'ManyRelatedField[{type(child).__name__}]'}
    if isinstance(f, drf_serializers.ListSerializer):
        child = f.child
        if isinstance(child, GenericObjectSerializer):
            return {'kind': 'generic_objects'}
        if isinstance(child, BaseModelSerializer):
            target = child.Meta.model
            ref = nested_reference(child, target)
            return OrderedDict([('kind', 'nested_many'), ('model', label_of(target))] + list(ref.items()))
        if isinstance(child, drf_serializers.ModelSerializer):
            target = child.Meta.model
            # the renderer reads the mapping rows from the model's table (dcim.portmapping,
            # dcim.porttemplatemapping): it must be a catalogue model too
            CAT.want(target)
            items = [classify(n, sub, target, type(child)) for n, sub in readable_fields(child)]
            return OrderedDict([('kind', 'mapping_list'), ('model', label_of(target)),
                                ('serializer', type(child).__name__), ('item_fields', items)])
        if isinstance(child, IntegerRangeSerializer):
            return {'kind': 'value', 'format': 'array', 'item_format': 'int_range'}
        return {'kind': 'unknown', 'class': f'ListSerializer[{type(child).__name__}]'}
    if isinstance(f, BaseModelSerializer):
        target = f.Meta.model
        ref = nested_reference(f, target)
        return OrderedDict([('kind', 'nested'), ('model', label_of(target))] + list(ref.items()))
    if isinstance(f, drf_serializers.ModelSerializer):
        target = f.Meta.model
        CAT.want(target)
        items = [classify(n, sub, target, type(f)) for n, sub in readable_fields(f)]
        return OrderedDict([('kind', 'nested_plain'), ('model', label_of(target)),
                            ('serializer', type(f).__name__), ('item_fields', items)])
    if isinstance(f, drf_relations.PrimaryKeyRelatedField):
        return {'kind': 'value', 'format': 'int'}
    if isinstance(f, drf_fields.ChoiceField):
        # Plain DRF ChoiceField (ModelSerializer default for model fields with choices): the raw value
        mf = None
        try:
            mf = model._meta.get_field(f.source)
        except Exception:
            pass
        fmt = model_field_format(mf) if mf is not None and mf.concrete else {'format': 'str'}
        return OrderedDict([('kind', 'value')] + list(fmt.items()) + [('drf_choice_field', True)])
    mf = None
    try:
        mf = model._meta.get_field(f.source)
        if not mf.concrete:
            mf = None
    except Exception:
        pass
    fmt = value_format_from_drf(f, mf)
    if fmt is not None:
        return OrderedDict([('kind', 'value')] + list(fmt.items()))
    return {'kind': 'unknown', 'class': type(f).__name__}


def when_missing(f):
    """What DRF does when the attribute is missing on the instance (Field.get_attribute)."""
    if f.default is not drf_fields.empty:
        return 'default'
    if f.allow_null:
        return 'null'
    if not f.required:
        return 'omit'
    return 'error'


def _classify(name, f, model, serializer_cls):
    """
    Return the catalogue field spec for serializer field `name` of a serializer for `model`.
    """
    spec = OrderedDict([('name', name)])

    if isinstance(f, NetBoxURLHyperlinkedIdentityField):
        spec['kind'] = 'ui_url'
        return spec
    if isinstance(f, NetBoxAPIHyperlinkedIdentityField):
        spec['kind'] = 'api_url'
        return spec
    if isinstance(f, drf_relations.HyperlinkedIdentityField):
        spec['kind'] = 'unknown'
        spec['class'] = type(f).__name__
        return spec
    if isinstance(f, RelatedObjectCountField):
        spec['kind'] = 'count'
        spec['relation'] = f.relation
        spec['when_missing'] = when_missing(f)
        # what NetBox's REST viewsets annotate it with (utilities.api.get_annotations_for_serializer:
        # count_related(related_field.model, related_field.name)): the rows of `table` whose
        # `fk_column` is this object's pk; for a many-to-many (Interface.vdcs, Site.asns) the rows
        # of its through table
        related_field = getattr(model, f.relation).field
        if related_field.many_to_many:
            spec['table'] = related_field.remote_field.through._meta.db_table
            spec['fk_column'] = related_field.m2m_reverse_name()
        else:
            spec['table'] = related_field.model._meta.db_table
            spec['fk_column'] = related_field.column
        return spec
    if isinstance(f, CustomFieldsDataField):
        spec['kind'] = 'custom_fields'
        spec['column'] = 'custom_field_data'
        return spec
    if isinstance(f, drf_serializers.ListSerializer) and isinstance(f.child, NestedTagSerializer) \
            and f.source == 'tags':
        ref = nested_reference(f.child, f.child.Meta.model)
        spec['kind'] = 'tags'
        spec['model'] = label_of(f.child.Meta.model)
        spec.update(ref)
        spec['through'] = OrderedDict([
            ('table', 'extras_taggeditem'), ('content_type_column', 'content_type_id'),
            ('object_id_column', 'object_id'), ('tag_column', 'tag_id'),
        ])
        spec['order_by'] = ordering_spec(f.child.Meta.model)
        return spec

    if isinstance(f, drf_fields.SerializerMethodField):
        method = getattr(serializer_cls, f.method_name, None)
        if name == 'display' and f.method_name == 'get_display' and \
                getattr(method, '__qualname__', '') == 'BaseModelSerializer.get_display':
            spec['kind'] = 'display'
            return spec
        if name == 'display' and method is not None:
            key = method.__qualname__
            src = source_of(method)
            if key in SERIALIZER_DISPLAY and SERIALIZER_DISPLAY[key][0] == src:
                spec['kind'] = 'display'
                spec['display'] = resolve_display_spec(SERIALIZER_DISPLAY[key][1])
                spec['serializer_method'] = key
                spec['source_hint'] = src
                return spec
            warn(f'unrecognised display override {key}')
        if method is not None and _norm(source_of(method)) == _SRC_JOB_OBJECT:
            attr_kind, attr = resolve_model_attr(model, name)
            if attr_kind == 'gfk':
                spec['kind'] = 'gfk'
                spec['ct_column'] = model._meta.get_field(attr.ct_field).column
                spec['id_column'] = model._meta.get_field(attr.fk_field).column
                spec['models'] = gfk_targets(model, attr)
                return spec
        spec['kind'] = 'method'
        spec['method'] = f'{label_of(model)}.{name}'
        spec['serializer_method'] = f'{serializer_cls.__name__}.{f.method_name}'
        spec['source_hint'] = source_of(method, SOURCE_HINT_LINES) if method else None
        return spec

    source = f.source
    if source == '*':
        spec['kind'] = 'unknown'
        spec['class'] = type(f).__name__
        spec['source'] = '*'
        return spec
    if '.' in source:
        spec['kind'] = 'source'
        spec['source'] = source
        shape = shape_of(name, f, model, serializer_cls)
        spec['render'] = shape
        return spec

    attr_kind, attr = resolve_model_attr(model, source)

    # Primary key
    if attr_kind == 'field' and attr.primary_key:
        spec['kind'] = 'pk'
        if attr.column != 'id' or name != 'id':
            spec['column'] = attr.column
        return spec

    shape = shape_of(name, f, model, serializer_cls)
    sk = shape['kind']

    if attr_kind == 'field':
        col = attr.column
        if sk == 'choice':
            spec['kind'] = 'choice'
            spec['column'] = col
            spec['choices'] = shape['choices']
        elif sk == 'content_type':
            spec['kind'] = 'content_type'
            spec['column'] = col
        elif sk == 'nested' and attr.is_relation:
            spec['kind'] = 'fk'
            spec['column'] = col
            spec['model'] = shape['model']
            spec['nullable'] = bool(attr.null)
            for k in ('fields', 'variant'):
                if k in shape:
                    spec[k] = shape[k]
        elif sk == 'value':
            spec['kind'] = 'value'
            spec['column'] = col
            mf = model_field_format(attr)
            fmt = OrderedDict((k, v) for k, v in shape.items() if k not in ('kind', 'name'))
            # The model field knows better for a few generic DRF fields
            if fmt.get('format') in ('str', 'json', 'int') and mf.get('format') in (
                    'inet', 'cidr', 'mac', 'uuid', 'timezone', 'json'):
                if not (fmt['format'] == 'str' and mf['format'] == 'json'):
                    fmt = mf
            if isinstance(attr, pg_fields.ArrayField) and fmt.get('format') == 'array':
                # item format from the model when DRF only says "str"
                mfa = model_field_format(attr)
                if fmt.get('item_format') in (None, 'unknown'):
                    fmt = mfa
            spec.update(fmt)
            if attr.is_relation:
                spec['fk_model'] = label_of(attr.related_model)
        else:
            spec['kind'] = 'unknown'
            spec['class'] = type(f).__name__
            spec['column'] = col
        return spec

    if attr_kind == 'm2m':
        through = m2m_through(attr)
        if sk == 'nested_many':
            spec['kind'] = 'm2m'
            spec['model'] = shape['model']
            spec['through'] = through
            for k in ('fields', 'variant'):
                if k in shape:
                    spec[k] = shape[k]
            spec['order_by'] = ordering_spec(attr.related_model)
        elif sk == 'content_types':
            spec['kind'] = 'content_types'
            spec['through'] = through
            spec['order_by'] = ordering_spec(attr.related_model)
        elif sk == 'slug_list':
            spec['kind'] = 'm2m'
            spec['model'] = shape['model']
            spec['through'] = through
            spec['as'] = shape['as']
            spec['order_by'] = ordering_spec(attr.related_model)
        elif sk == 'pk_list':
            spec['kind'] = 'm2m'
            spec['model'] = label_of(attr.related_model)
            spec['through'] = through
            spec['as'] = 'pk'
            spec['order_by'] = ordering_spec(attr.related_model)
        else:
            spec['kind'] = 'unknown'
            spec['class'] = type(f).__name__
        return spec

    if attr_kind == 'gfk':
        ct_field = model._meta.get_field(attr.ct_field)
        fk_field = model._meta.get_field(attr.fk_field)
        if sk == 'gfk':
            spec['kind'] = 'gfk'
            spec['ct_column'] = ct_field.column
            spec['id_column'] = fk_field.column
            spec['models'] = gfk_targets(model, attr)
        else:
            spec['kind'] = 'unknown'
            spec['class'] = type(f).__name__
        return spec

    if attr_kind == 'reverse' and attr.many_to_many:
        fwd = attr.field
        spec['kind'] = 'm2m'
        spec['model'] = label_of(attr.related_model)
        spec['through'] = OrderedDict([
            ('table', fwd.remote_field.through._meta.db_table),
            ('source_column', fwd.m2m_reverse_name()),
            ('target_column', fwd.m2m_column_name()),
        ])
        if sk == 'nested_many':
            for k in ('fields', 'variant'):
                if k in shape:
                    spec[k] = shape[k]
        else:
            spec['render'] = shape
        spec['order_by'] = ordering_spec(attr.related_model)
        spec['note'] = f'reverse side of {fwd.model._meta.label_lower}.{fwd.name}'
        return spec

    if attr_kind in ('reverse', 'generic_relation'):
        rel_model = attr.related_model
        spec['kind'] = 'related'
        spec['model'] = label_of(rel_model)
        if attr_kind == 'reverse':
            spec['fk_column'] = attr.field.column
            spec['note'] = f'reverse {type(attr).__name__} {attr.field.model._meta.label_lower}.{attr.field.name}'
        else:
            rm = rel_model._meta
            spec['ct_column'] = rm.get_field(attr.content_type_field_name).column
            spec['id_column'] = rm.get_field(attr.object_id_field_name).column
            spec['note'] = 'GenericRelation (rows of the related table whose content type and object id point here)'
        spec['many'] = bool(getattr(attr, 'multiple', True)) if attr_kind == 'reverse' else True
        spec['order_by'] = ordering_spec(rel_model)
        spec['render'] = shape
        return spec

    if attr_kind == 'tags':
        spec['kind'] = 'unknown'
        spec['class'] = type(f).__name__
        spec['note'] = 'tags rendered by a non-standard field'
        return spec

    if attr_kind in ('property', 'method', 'attribute'):
        spec['kind'] = 'method'
        spec['method'] = f'{label_of(model)}.{source}'
        spec['render'] = shape
        hint = attr_source_hint(model, source)
        if hint:
            spec['source_hint'] = hint
        return spec

    if attr_kind == 'annotation':
        spec['kind'] = 'annotation'
        spec['when_missing'] = when_missing(f)
        if spec['when_missing'] == 'default':
            default = f.default
            spec['default'] = default() if callable(default) else default
        spec['render'] = shape
        spec['note'] = ('not a model attribute: filled from a queryset annotation when present, '
                        'otherwise the default')
        return spec

    spec['kind'] = 'unknown'
    spec['class'] = type(f).__name__
    return spec


def classify(name, f, model, serializer_cls):
    spec = _classify(name, f, model, serializer_cls)
    if spec.get('kind') == 'method':
        d = derive_hint(model, name, spec)
        if d is not None:
            spec['derive'] = d
    return spec


# ---------------------------------------------------------------------------
# Machine-readable recipes for some Python-computed fields ("derive"). Each recipe is only attached when the
# Python source it was written for is unchanged; otherwise the field stays a plain "method".
# ---------------------------------------------------------------------------

def _prop_source(model, attr):
    kind, obj = resolve_model_attr(model, attr)
    if kind == 'property':
        fn = obj.fget if isinstance(obj, property) else obj.func
        return source_of(fn)
    return None


def _norm(src):
    return textwrap.dedent(src or '').strip('\n')


_SRC_LEVEL = _norm('''
def level(self):
    """Zero-based depth (root = 0). Mirrors django-mptt's `level`."""
    if not self.path:
        return 0
    return str(self.path).count('.')
''')
_SRC_PRIMARY_IP = [_norm('''
def primary_ip(self):
    if %s and self.primary_ip4:
        return self.primary_ip4
    if self.primary_ip6:
        return self.primary_ip6
    if self.primary_ip4:
        return self.primary_ip4
    return None
''' % cond) for cond in ("ConfigItem('PREFER_IPV4')()", 'get_config().PREFER_IPV4')]
_SRC_FAMILY = {
    'address': _norm('''
def family(self):
    if not self.address:
        return None
    if isinstance(self.address, str):
        return netaddr.IPNetwork(self.address).version
    return self.address.version
'''),
    'prefix': _norm('''
def family(self):
    if not self.prefix:
        return None
    if isinstance(self.prefix, str):
        return netaddr.IPNetwork(self.prefix).version
    return self.prefix.version
'''),
    'start_address': _norm('''
def family(self):
    if not self.start_address:
        return None
    if isinstance(self.start_address, str):
        return netaddr.IPAddress(self.start_address.split('/')[0]).version
    return self.start_address.version
'''),
}
_SRC_OCCUPIED_CABLED = _norm('''
def _occupied(self):
    return bool(self.mark_connected or self.cable_id)
''')
_SRC_OCCUPIED_INTERFACE = _norm('''
def _occupied(self):
    return super()._occupied or bool(self.wireless_link_id)
''')
_SRC_OCCUPIED_DEVICEBAY = _norm('''
def _occupied(self):
    """
    Indicates whether the device bay is occupied by a child device.
    """
    return bool(not self.enabled or self.installed_device_id)
''')
_SRC_OCCUPIED_MODULEBAY = _norm('''
def _occupied(self):
    """
    Indicates whether the module bay is occupied by a module.
    """
    return bool(not self.enabled or hasattr(self, 'installed_module'))
''')
_SRC_MAC = _norm('''
def mac_address(self):
    if self.primary_mac_address:
        return self.primary_mac_address.mac_address
    return None
''')
_SRC_COUNT_IP = _norm('''
def count_ipaddresses(self):
    return self.ip_addresses.count()
''')
_SRC_COUNT_FHRP = _norm('''
def count_fhrp_groups(self):
    return self.fhrp_group_assignments.count()
''')
_SRC_L2VPN = _norm('''
def l2vpn_termination(self):
    return self.l2vpn_terminations.first()
''')
_SRC_PROTOCOL = _norm('''
def protocol(self) -> str | None:
    return self._legacy_protocol_ports[0]
''')
_SRC_PORTS = _norm('''
def ports(self) -> list[int] | None:
    return self._legacy_protocol_ports[1]
''')
_SRC_X_TERMINATIONS = {
    'a_terminations': _norm('''
def a_terminations(self):
    return self._get_x_terminations(CableEndChoices.SIDE_A)
'''),
    'b_terminations': _norm('''
def b_terminations(self):
    return self._get_x_terminations(CableEndChoices.SIDE_B)
'''),
}
_SRC_IS_PRIMARY = _norm('''
def is_primary(self):
    # Compare against primary_mac_address_id (a column already loaded on the assigned object) rather than
    # dereferencing primary_mac_address, to avoid an extra query per object in list responses.
    if (obj := self.assigned_object) is not None and hasattr(obj, 'primary_mac_address_id'):
        return obj.primary_mac_address_id == self.pk
    return False
''')
_SRC_CHILDREN = _norm('''
def children(self):
    return self._children
''')
_SRC_UNIT_COUNT = _norm('''
def get_unit_count(self, obj):
    return len(obj.units)
''')
_SRC_CONFIG_CONTEXT = _norm('''
def get_config_context(self, obj):
    return obj.get_config_context()
''')
_SRC_PARENT_DEVICE = [_norm('''
def get_parent_device(self, obj):
    try:
        device_bay = obj.parent_bay
    except DeviceBay.DoesNotExist:
        return None
    data = self._parent_device_serializer.to_representation(device_bay.device)
    data['device_bay'] = self._parent_bay_serializer.to_representation(device_bay)
    return data
'''), _norm('''
def get_parent_device(self, obj):
    try:
        device_bay = obj.parent_bay
    except DeviceBay.DoesNotExist:
        return None
    context = {'request': self.context['request']}
    data = NestedDeviceSerializer(instance=device_bay.device, context=context).data
    data['device_bay'] = NestedDeviceBaySerializer(instance=device_bay, context=context).data
    return data
''')]  # 4.7.3 caches the two serializers; 4.7.0 to 4.7.2 build them per call: the same output
# NetBox 4.7.0 to 4.7.2's JobSerializer.object (4.7.3 made it a GFKSerializerField): the nested
# representation of the generic foreign key's target, as a gfk field renders it. The two differ
# only for a target model without a REST serializer (a plugin's): this gives its object_repr.
_SRC_JOB_OBJECT = _norm('''
def get_object(self, obj):
    """
    Serialize a nested representation of the object.
    """
    if obj.object is None:
        return None
    try:
        serializer = get_serializer_for_model(obj.object)
    except SerializerNotFound:
        return obj.object_repr
    context = {'request': self.context['request']}
    return serializer(obj.object, nested=True, context=context).data
''')


def _generic_rel(model, rel_name):
    f = model._meta.get_field(rel_name)
    rm = f.related_model._meta
    return f.related_model, rm.get_field(f.content_type_field_name).column, rm.get_field(f.object_id_field_name).column


def derive_hint(model, name, spec):
    src = _norm(spec.get('source_hint'))
    method = spec.get('method', '').rsplit('.', 1)[-1]
    D = OrderedDict
    try:
        if method == 'level' and src == _SRC_LEVEL:
            return D([('kind', 'path_depth'), ('column', model._meta.get_field('path').column)])
        if method == 'primary_ip' and src in _SRC_PRIMARY_IP:
            return D([('kind', 'prefer_ipv4'), ('ipv4_column', 'primary_ip4_id'), ('ipv6_column', 'primary_ip6_id'),
                      ('setting', 'PREFER_IPV4'), ('setting_default', False)])
        if method == 'family':
            for col, expected in _SRC_FAMILY.items():
                if src == expected:
                    return D([('kind', 'ip_family'), ('column', col)])
        if name == '_occupied':
            psrc = _norm(_prop_source(model, '_occupied')) if spec.get('serializer_method') else src
            if psrc == _SRC_OCCUPIED_CABLED:
                return D([('kind', 'any_truthy'), ('columns', ['mark_connected', 'cable_id'])])
            defs = [c.__dict__['_occupied'] for c in model.__mro__ if '_occupied' in c.__dict__]
            parent_src = _norm(source_of(defs[1].fget)) if len(defs) > 1 and isinstance(defs[1], property) else None
            if psrc == _SRC_OCCUPIED_INTERFACE and parent_src == _SRC_OCCUPIED_CABLED:
                return D([('kind', 'any_truthy'), ('columns', ['mark_connected', 'cable_id', 'wireless_link_id'])])
            if psrc == _SRC_OCCUPIED_DEVICEBAY:
                return D([('kind', 'any_truthy'), ('not_columns', ['enabled']), ('columns', ['installed_device_id'])])
            if psrc == _SRC_OCCUPIED_MODULEBAY:
                return D([('kind', 'any_truthy'), ('not_columns', ['enabled']), ('columns', []),
                          ('exists', D([('table', 'dcim_module'), ('fk_column', 'module_bay_id')]))])
        if method == 'mac_address' and src == _SRC_MAC:
            return D([('kind', 'fk_column'), ('fk_column', 'primary_mac_address_id'), ('model', 'dcim.macaddress'),
                      ('column', 'mac_address'), ('format', 'mac')])
        if method == 'count_ipaddresses' and src == _SRC_COUNT_IP:
            rm, ctc, idc = _generic_rel(model, 'ip_addresses')
            return D([('kind', 'generic_count'), ('table', rm._meta.db_table), ('ct_column', ctc), ('id_column', idc)])
        if method == 'count_fhrp_groups' and src == _SRC_COUNT_FHRP:
            rm, ctc, idc = _generic_rel(model, 'fhrp_group_assignments')
            return D([('kind', 'generic_count'), ('table', rm._meta.db_table), ('ct_column', ctc), ('id_column', idc)])
        if method == 'l2vpn_termination' and src == _SRC_L2VPN:
            rm, ctc, idc = _generic_rel(model, 'l2vpn_terminations')
            return D([('kind', 'generic_first'), ('model', label_of(rm)), ('ct_column', ctc), ('id_column', idc),
                      ('order_by', ordering_spec(rm))])
        if method == 'protocol' and src == _SRC_PROTOCOL:
            return D([('kind', 'legacy_port_mappings'), ('column', 'port_mappings'), ('part', 'protocol')])
        if method == 'ports' and src == _SRC_PORTS:
            return D([('kind', 'legacy_port_mappings'), ('column', 'port_mappings'), ('part', 'ports')])
        if method in _SRC_X_TERMINATIONS and src == _SRC_X_TERMINATIONS[method]:
            from dcim.models import CableTermination
            ct_model = CableTermination
            return D([('kind', 'cable_end_terminations'), ('table', ct_model._meta.db_table),
                      ('fk_column', 'cable_id'), ('end_column', 'cable_end'), ('cable_end', method[0].upper()),
                      ('ct_column', 'termination_type_id'), ('id_column', 'termination_id'),
                      ('order_by', ordering_spec(ct_model)),
                      ('item', 'GenericObjectSerializer: {"object_type": "app.model", "object_id": id, '
                               '"object": brief of the target}')])
        if method == 'is_primary' and src == _SRC_IS_PRIMARY:
            return D([('kind', 'gfk_column_equals_pk'), ('ct_column', 'assigned_object_type_id'),
                      ('id_column', 'assigned_object_id'), ('column', 'primary_mac_address_id')])
        if method == 'children' and src == _SRC_CHILDREN:
            return D([('kind', 'column'), ('column', '_children'), ('format', 'int')])
        if name == 'unit_count' and src == _SRC_UNIT_COUNT:
            return D([('kind', 'array_length'), ('column', 'units')])
        if name == 'config_context' and src == _SRC_CONFIG_CONTEXT and \
                model._meta.get_field('_config_context_data'):
            return D([('kind', 'cached_column'), ('column', '_config_context_data'),
                      ('note', 'when the column is NULL NetBox renders the config context in Python '
                               '(ConfigContextModel.render_config_context)')])
        if name == 'parent_device' and src in _SRC_PARENT_DEVICE:
            from dcim.api.serializers_.nested import NestedDeviceBaySerializer, NestedDeviceSerializer
            from dcim.models import DeviceBay
            dev = nested_reference(NestedDeviceSerializer(context={'request': None}), model)
            bay = nested_reference(NestedDeviceBaySerializer(context={'request': None}), DeviceBay)
            return D([('kind', 'parent_bay'), ('table', DeviceBay._meta.db_table),
                      ('installed_column', 'installed_device_id'), ('device_column', 'device_id'),
                      ('device_model', 'dcim.device'), ('device_variant', dev.get('variant')),
                      ('bay_model', 'dcim.devicebay'), ('bay_variant', bay.get('variant')),
                      ('note', 'null unless a dcim_devicebay row has installed_device_id = this device; '
                               'else the parent device rendered with device_variant plus a trailing '
                               '"device_bay" key holding the bay rendered with bay_variant')])
    except Exception as e:  # pragma: no cover
        warn(f'derive hint for {label_of(model)}.{name} failed: {e!r}')
    return None


# ---------------------------------------------------------------------------
# Generic foreign key targets
# ---------------------------------------------------------------------------

def _feature_models(feature):
    return sorted(f'{ot.app_label}.{ot.model}' for ot in ObjectType.objects.with_feature(feature)
                  if ot.model_class() is not None)


def gfk_targets(model, gfk):
    """
    Return the sorted list of model labels a generic foreign key can point at, as restricted by the
    serializer's ContentTypeField queryset (NetBox's *_ASSIGNMENT_MODELS constants), or by the model's
    constants / features when the serializer does not restrict it.
    """
    key = (label_of(model), gfk.name)
    if key in CAT.gfk_targets:
        return CAT.gfk_targets[key]
    labels = None
    serializer = get_serializer_for_model(model)(context={'request': None})
    ct_name = gfk.ct_field
    f = serializer.fields.get(ct_name)
    if isinstance(f, ContentTypeField) and f.queryset is not None and f.queryset.query.where:
        labels = sorted(f'{ct.app_label}.{ct.model}' for ct in f.queryset)
    if labels is None:
        lbl = label_of(model)
        if lbl == 'dcim.cabletermination':
            from dcim.constants import CABLE_TERMINATION_MODELS
            from django.contrib.contenttypes.models import ContentType
            labels = sorted(f'{ct.app_label}.{ct.model}'
                            for ct in ContentType.objects.filter(CABLE_TERMINATION_MODELS))
        elif lbl == 'vpn.l2vpntermination':
            from vpn.constants import L2VPN_ASSIGNMENT_MODELS
            from django.contrib.contenttypes.models import ContentType
            labels = sorted(f'{ct.app_label}.{ct.model}'
                            for ct in ContentType.objects.filter(L2VPN_ASSIGNMENT_MODELS))
        elif lbl == 'ipam.fhrpgroupassignment':
            labels = ['dcim.interface', 'virtualization.vminterface']
        elif lbl == 'core.job':
            labels = _feature_models('jobs')
        elif lbl == 'vpn.tunneltermination':
            labels = ['dcim.interface', 'virtualization.vminterface']
        elif lbl == 'tenancy.contactassignment':
            labels = _feature_models('contacts')
        elif lbl == 'extras.journalentry':
            labels = _feature_models('journaling')
        elif lbl == 'extras.imageattachment':
            labels = _feature_models('image_attachments')
        elif lbl == 'extras.eventrule':
            labels = ['extras.notificationgroup', 'extras.script', 'extras.webhook']
        else:
            warn(f'no known target set for GFK {lbl}.{gfk.name}')
            labels = []
    from django.apps import apps
    for lab in labels:
        try:
            m = apps.get_model(lab)
        except LookupError:
            continue
        try:
            get_serializer_for_model(m)
        except Exception:
            continue
        CAT.want(m)
    CAT.gfk_targets[key] = labels
    return labels


# ---------------------------------------------------------------------------
# Snapshot (serialize_object) fields
# ---------------------------------------------------------------------------

def columns_spec(model):
    """Every concrete local column of the model's table with its format (used by display specs)."""
    out = OrderedDict()
    for field in model._meta.concrete_model._meta.local_concrete_fields:
        d = OrderedDict([('field', field.name)])
        d.update(model_field_format(field))
        if field.remote_field is not None:
            d['fk_model'] = label_of(field.related_model)
        if getattr(field, 'choices', None) and d.get('format') in ('str', 'int'):
            d['choices'] = register_choices(field.choices, f'{label_of(model)}.{field.name}')
        out[field.column] = d
    return out


def snapshot_spec(model):
    """
    Mirror django.core.serializers (python) + utilities.serialization.serialize_object field order.
    """
    out = []
    cfd = None
    concrete = model._meta.concrete_model
    for field in concrete._meta.local_fields:
        if not field.serialize:
            continue
        entry = OrderedDict([('name', field.name), ('column', field.column)])
        if field.remote_field is not None:
            entry.update(model_field_format(field))
            entry['fk_model'] = label_of(field.related_model)
        else:
            fmt = model_field_format(field)
            if fmt['format'] == 'array':
                # utilities.serializers.json.Serializer: an ArrayField whose items are "protected" types
                # (int, float, Decimal, bool, date, datetime, time) stays a list; others (str, inet, ranges,
                # nested arrays) become a JSON-encoded string. Empty / null arrays stay [] / null.
                if fmt['item_format'] in ('int', 'float', 'decimal', 'bool', 'date', 'datetime', 'time'):
                    fmt['format'] = 'array_list'
                else:
                    fmt['format'] = 'array_json'
            if fmt['format'] == 'range':
                fmt['format'] = 'range_json'
            entry.update(fmt)
        if field.name == 'last_updated':
            entry['excluded_by_default'] = True
        if field.name == 'custom_field_data':
            cfd = field
            continue
        out.append(entry)
    for field in concrete._meta.local_many_to_many:
        if not field.serialize:
            continue
        if not field.remote_field.through._meta.auto_created:
            continue  # Django's serializer skips M2M fields with a custom through model
        out.append(OrderedDict([
            ('name', field.name),
            ('m2m', m2m_through(field)),
            ('model', label_of(field.related_model)),
            ('order_by', ordering_spec(field.related_model)),
        ]))
    if cfd is not None:
        out.append(OrderedDict([('name', 'custom_fields'), ('kind', 'custom_fields'), ('column', cfd.column)]))
    from extras.utils import is_taggable
    if is_taggable(model):
        out.append(OrderedDict([('name', 'tags'), ('kind', 'tags')]))
    return out


SNAPSHOT_OVERRIDES = {
    'dcim.models.cables.Cable.serialize_object': {
        'description': ('Default serialization, then "a_terminations" and "b_terminations" are appended: '
                        'each the ascending-sorted list of dcim_cabletermination ids (pk) of this cable with '
                        'cable_end "A" / "B" respectively.'),
        'append': [
            OrderedDict([('name', 'a_terminations'), ('kind', 'cable_terminations'), ('cable_end', 'A'),
                         ('table', 'dcim_cabletermination'), ('fk_column', 'cable_id'),
                         ('end_column', 'cable_end'), ('value_column', 'id'), ('sort', 'asc')]),
            OrderedDict([('name', 'b_terminations'), ('kind', 'cable_terminations'), ('cable_end', 'B'),
                         ('table', 'dcim_cabletermination'), ('fk_column', 'cable_id'),
                         ('end_column', 'cable_end'), ('value_column', 'id'), ('sort', 'asc')]),
        ],
        'exclude': [],
    },
    'extras.models.configs.ConfigContextModel.serialize_object': {
        'description': ('Excludes "_config_context_data" and "_config_context_generation" (derived cache '
                        'fields) from the default serialization.'),
        'append': [],
        'exclude': ['_config_context_data', '_config_context_generation'],
    },
}


def snapshot_override(model):
    from netbox.models.features import ChangeLoggingMixin
    impl = None
    for cls in model.__mro__:
        if 'serialize_object' in cls.__dict__:
            impl = cls
            break
    if impl is None:
        return None, 'utilities.serialization.serialize_object'
    if impl is ChangeLoggingMixin:
        return None, 'netbox.models.features.ChangeLoggingMixin.serialize_object'
    return f'{impl.__module__}.{impl.__qualname__}.serialize_object', None


# ---------------------------------------------------------------------------
# Display (__str__) specs
# ---------------------------------------------------------------------------

def fk(column, model):
    return OrderedDict([('kind', 'fk'), ('column', column), ('model', model)])


def gfk(ct_column, id_column):
    return OrderedDict([('kind', 'gfk'), ('ct_column', ct_column), ('id_column', id_column)])


def T(template, **refs):
    d = OrderedDict([('kind', 'template'), ('template', template)])
    if refs:
        d['refs'] = OrderedDict(sorted(refs.items()))
    return d


def CASES(cases, refs=None, vars=None):
    d = OrderedDict([('kind', 'cases'), ('cases', [
        OrderedDict([('when', w), ('template', t)]) if w else OrderedDict([('template', t)]) for w, t in cases
    ])])
    if refs:
        d['refs'] = OrderedDict(sorted(refs.items()))
    if vars:
        d['vars'] = OrderedDict(sorted(vars.items()))
    return d


# Hand-written specs for __str__ implementations that are not a single column. Keyed by the qualified name of
# the class that defines __str__, with the exact (dedented) source they were written for. When the source no
# longer matches, the model falls back to {"kind": "python"} and a warning is printed.
MANUAL_DISPLAY = {}


def manual(qualname, source, spec):
    MANUAL_DISPLAY[qualname] = (textwrap.dedent(source).strip('\n'), spec)


manual('circuits.models.circuits.CircuitGroupAssignment', '''
def __str__(self):
    if self.priority:
        return f"{self.group} ({self.get_priority_display()})"
    return str(self.group)
''', CASES([
    (['priority'], '{=group} ({priority|label:CircuitPriorityChoices})'),
    (None, '{=group}'),
], refs={'group': fk('group_id', 'circuits.circuitgroup')}))

manual('circuits.models.circuits.CircuitTermination', '''
def __str__(self):
    return f'{self.circuit}: Termination {self.term_side}'
''', T('{=circuit}: Termination {term_side}', circuit=fk('circuit_id', 'circuits.circuit')))

manual('circuits.models.providers.ProviderAccount', '''
def __str__(self):
    if self.name:
        return f'{self.account} ({self.name})'
    return f'{self.account}'
''', CASES([(['name'], '{account} ({name})'), (None, '{account}')]))

manual('circuits.models.virtual_circuits.VirtualCircuitTermination', '''
def __str__(self):
    return f'{self.virtual_circuit}: {self.get_role_display()} termination'
''', T('{=virtual_circuit}: {role|label:VirtualCircuitTerminationRoleChoices} termination',
       virtual_circuit=fk('virtual_circuit_id', 'circuits.virtualcircuit')))

manual('dcim.models.base.PortMappingBase', '''
def __str__(self):
    return f'{self.front_port}:{self.front_port_position} to {self.rear_port}:{self.rear_port_position}'
''', lambda model: T('{=front_port}:{front_port_position} to {=rear_port}:{rear_port_position}',
                    front_port=fk('front_port_id', label_of(model._meta.get_field('front_port').related_model)),
                    rear_port=fk('rear_port_id', label_of(model._meta.get_field('rear_port').related_model))))

manual('dcim.models.cables.Cable', '''
def __str__(self):
    pk = self.pk or self._pk
    return self.label or f'#{pk}'
''', CASES([(['label'], '{label}'), (None, '#{id}')]))

manual('dcim.models.cables.CableTermination', '''
def __str__(self):
    return f'Cable {self.cable} to {self.termination}'
''', T('Cable {=cable} to {=termination}', cable=fk('cable_id', 'dcim.cable'),
       termination=gfk('termination_type_id', 'termination_id')))

_component_src = '''
def __str__(self):
    if self.label:
        return f"{self.name} ({self.label})"
    return self.name
'''
manual('dcim.models.device_components.ComponentModel', _component_src,
       CASES([(['label'], '{name} ({label})'), (None, '{name}')]))
manual('dcim.models.device_component_templates.ComponentTemplateModel', _component_src,
       CASES([(['label'], '{name} ({label})'), (None, '{name}')]))

manual('dcim.models.devices.Device', '''
def __str__(self):
    if self.label and self.asset_tag:
        return f'{self.label} ({self.asset_tag})'
    if self.label:
        return self.label
    if self.device_type and self.asset_tag:
        return f'{self.device_type.manufacturer} {self.device_type.model} ({self.asset_tag})'
    if self.device_type:
        return f'{self.device_type.manufacturer} {self.device_type.model} ({self.pk})'
    return super().__str__()
''', CASES([
    # Device.label is a property: name if set, else "<virtual chassis name>:<vc_position>" if in a VC, else None
    (['name', 'asset_tag'], '{name} ({asset_tag})'),
    (['name'], '{name}'),
    (['=virtual_chassis', 'asset_tag'], '{virtual_chassis.name}:{vc_position} ({asset_tag})'),
    (['=virtual_chassis'], '{virtual_chassis.name}:{vc_position}'),
    (['=device_type', 'asset_tag'], '{=device_type.manufacturer} {device_type.model} ({asset_tag})'),
    (['=device_type'], '{=device_type.manufacturer} {device_type.model} ({id})'),
    (None, 'Device object ({id})'),
], refs={
    'virtual_chassis': fk('virtual_chassis_id', 'dcim.virtualchassis'),
    'device_type': fk('device_type_id', 'dcim.devicetype'),
    'device_type.manufacturer': fk('manufacturer_id', 'dcim.manufacturer'),
}))

manual('dcim.models.devices.MACAddress', '''
def __str__(self):
    return str(self.mac_address)
''', T('{mac_address}'))

manual('dcim.models.modules.Module', '''
def __str__(self):
    return f'{self.module_bay.name}: {self.module_type} ({self.pk})'
''', T('{module_bay.name}: {=module_type} ({id})', module_bay=fk('module_bay_id', 'dcim.modulebay'),
       module_type=fk('module_type_id', 'dcim.moduletype')))

manual('dcim.models.racks.Rack', '''
def __str__(self):
    if self.facility_id:
        return f'{self.name} ({self.facility_id})'
    return self.name
''', CASES([(['facility_id'], '{name} ({facility_id})'), (None, '{name}')]))

manual('dcim.models.racks.RackReservation', '''
def __str__(self):
    return "Reservation for rack {}".format(self.rack)
''', T('Reservation for rack {=rack}', rack=fk('rack_id', 'dcim.rack')))

manual('extras.models.customfields.CustomField', '''
def __str__(self):
    return self.label or self.name.replace('_', ' ').capitalize()
''', CASES([(['label'], '{label}'), (None, '{name|replace:_: |capitalize}')]))

manual('extras.models.models.ImageAttachment', '''
def __str__(self):
    return self.name or self.filename
''', CASES([(['name'], '{name}'), (None, '{image|basename|removeprefix:$prefix}')],
           refs={'object_type': fk('object_type_id', 'contenttypes.contenttype')},
           vars={'prefix': '{object_type.model}_{object_id}_'}))

manual('extras.models.models.JournalEntry', '''
def __str__(self):
    created = timezone.localtime(self.created)
    return (
        f"{created.date().isoformat()} {created.time().isoformat(timespec='minutes')} "
        f"({self.get_kind_display()})"
    )
''', T('{created|localdate} {created|localtime_hm} ({kind|label:JournalEntryKindChoices})'))

manual('ipam.models.ip.Aggregate', '''
def __str__(self):
    return str(self.prefix)
''', T('{prefix}'))

manual('ipam.models.ip.IPRange', '''
def __str__(self):
    return self.name
''', T('{start_address|ip_range_name:end_address}'))

manual('ipam.models.asns.ASN', '''
def __str__(self):
    return f'AS{self.asn_with_asdot}'
''', T('AS{asn|asn_with_asdot}'))

manual('ipam.models.asns.ASNRange', '''
def __str__(self):
    return f'{self.name} ({self.range_as_string()})'
''', T('{name} ({start}-{end})'))

manual('ipam.models.fhrp.FHRPGroup', '''
def __str__(self):
    name = ''
    if self.name:
        name = f'{self.name} '

    name += f'{self.get_protocol_display()}: {self.group_id}'

    # Append the first assigned IP addresses (if any) to serve as an additional identifier
    if self.pk:
        ip_address = self.ip_addresses.first()
        if ip_address:
            return f"{name} ({ip_address})"

    return name
''', CASES([
    (['name', '=first_ip'], '{name} {protocol|label:FHRPGroupProtocolChoices}: {group_id} ({=first_ip})'),
    (['=first_ip'], '{protocol|label:FHRPGroupProtocolChoices}: {group_id} ({=first_ip})'),
    (['name'], '{name} {protocol|label:FHRPGroupProtocolChoices}: {group_id}'),
    (None, '{protocol|label:FHRPGroupProtocolChoices}: {group_id}'),
], refs={'first_ip': OrderedDict([
    ('kind', 'first_related'), ('model', 'ipam.ipaddress'),
    ('ct_column', 'assigned_object_type_id'), ('id_column', 'assigned_object_id'),
    ('ct_model', 'ipam.fhrpgroup'), ('order_by', '@model_ordering'),
])}))

manual('ipam.models.fhrp.FHRPGroupAssignment', '''
def __str__(self):
    return f'{self.interface}: {self.group} ({self.priority})'
''', T('{=interface}: {=group} ({priority})', interface=gfk('interface_type_id', 'interface_id'),
       group=fk('group_id', 'ipam.fhrpgroup')))

manual('ipam.models.ip.IPAddress', '''
def __str__(self):
    return str(self.address)
''', T('{address}'))

manual('ipam.models.ip.Prefix', '''
def __str__(self):
    return str(self.prefix)
''', T('{prefix}'))

manual('ipam.models.vlans.VLAN', '''
def __str__(self):
    return f'{self.name} ({self.vid})'
''', T('{name} ({vid})'))

manual('ipam.models.vlans.VLANTranslationRule', '''
def __str__(self):
    return f'{self.local_vid} -> {self.remote_vid} ({self.policy})'
''', T('{local_vid} -> {remote_vid} ({=policy})', policy=fk('policy_id', 'ipam.vlantranslationpolicy')))

manual('ipam.models.vrfs.VRF', '''
def __str__(self):
    if self.rd:
        return f'{self.name} ({self.rd})'
    return self.name
''', CASES([(['rd'], '{name} ({rd})'), (None, '{name}')]))

manual('tenancy.models.contacts.ContactAssignment', '''
def __str__(self):
    if self.priority:
        return f"{self.contact} ({self.get_priority_display()}) -> {self.object}"
    return str(f"{self.contact} -> {self.object}")
''', CASES([
    (['priority'], '{=contact} ({priority|label:ContactPriorityChoices}) -> {=object}'),
    (None, '{=contact} -> {=object}'),
], refs={'contact': fk('contact_id', 'tenancy.contact'), 'object': gfk('object_type_id', 'object_id')}))

manual('vpn.models.l2vpn.L2VPN', '''
def __str__(self):
    if self.identifier:
        return f'{self.name} ({self.identifier})'
    return f'{self.name}'
''', CASES([(['identifier'], '{name} ({identifier})'), (None, '{name}')]))

manual('vpn.models.l2vpn.L2VPNTermination', '''
def __str__(self):
    if self.pk is not None:
        return f'{self.assigned_object} <> {self.l2vpn}'
    return super().__str__()
''', T('{=assigned_object} <> {=l2vpn}', assigned_object=gfk('assigned_object_type_id', 'assigned_object_id'),
       l2vpn=fk('l2vpn_id', 'vpn.l2vpn')))

manual('vpn.models.tunnels.TunnelTermination', '''
def __str__(self):
    return f'{self.tunnel}: Termination {self.pk}'
''', T('{=tunnel}: Termination {id}', tunnel=fk('tunnel_id', 'vpn.tunnel')))

manual('wireless.models.WirelessLink', '''
def __str__(self):
    return self.ssid or f'#{self.pk}'
''', CASES([(['ssid'], '{ssid}'), (None, '#{id}')]))

manual('django.contrib.auth.base_user.AbstractBaseUser', '''
def __str__(self):
    return self.get_username()
''', T('{username}'))

manual('django.contrib.contenttypes.models.ContentType', '''
def __str__(self):
    return self.app_labeled_name
''', OrderedDict([('kind', 'python'), ('note', 'ContentType.app_labeled_name uses verbose names')]))


# Serializers whose get_display() is not str(obj). Keyed by "<SerializerClass>.get_display".
SERIALIZER_DISPLAY = {}


def serializer_display(key, source, spec):
    SERIALIZER_DISPLAY[key] = (textwrap.dedent(source).strip('\n'), spec)


serializer_display('UserSerializer.get_display', '''
def get_display(self, obj):
    if full_name := obj.get_full_name():
        return f"{obj.username} ({full_name})"
    return obj.username
''', CASES([
    (['$full_name|strip'], '{username} ({$full_name|strip})'),
    (None, '{username}'),
], vars={'full_name': '{first_name} {last_name}'}))

SERIALIZER_DISPLAY['NestedUserSerializer.get_display'] = SERIALIZER_DISPLAY['UserSerializer.get_display']

serializer_display('ScriptSerializer.get_display', '''
def get_display(self, obj):
    return f'{obj.name} ({obj.module})'
''', T('{name} ({=module})', module=fk('module_id', 'extras.scriptmodule')))

manual('extras.models.scripts.ScriptModule', '''
def __str__(self):
    return self.python_name
''', T('{file_path|python_module_name}'))


_SIMPLE_STR = [
    re.compile(r"^def __str__\(self\):\n    return self\.(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$"),
    re.compile(r"^def __str__\(self\):\n    return f'\{self\.(?P<attr>[A-Za-z_][A-Za-z0-9_]*)\}'$"),
    re.compile(r'^def __str__\(self\):\n    return f"\{self\.(?P<attr>[A-Za-z_][A-Za-z0-9_]*)\}"$'),
    re.compile(r"^def __str__\(self\):\n    return str\(self\.(?P<attr>[A-Za-z_][A-Za-z0-9_]*)\)$"),
]


def resolve_display_spec(spec):
    from django.apps import apps
    spec = json.loads(json.dumps(spec))
    for ref in (spec.get('refs') or {}).values():
        if ref.get('order_by') == '@model_ordering':
            ref['order_by'] = ordering_spec(apps.get_model(ref['model']))
        if ref.get('kind') in ('fk', 'first_related') and ref['model'] != 'contenttypes.contenttype':
            CAT.want(apps.get_model(ref['model']))
    return spec


def display_spec(model):
    for cls in model.__mro__:
        if '__str__' in cls.__dict__:
            break
    qual = f'{cls.__module__}.{cls.__qualname__}'
    fn = cls.__dict__['__str__']
    src = textwrap.dedent(inspect.getsource(fn)).strip('\n')
    if qual in MANUAL_DISPLAY:
        expected, spec = MANUAL_DISPLAY[qual]
        if expected == src:
            if callable(spec):
                # one __str__ shared by models whose references point at different models
                spec = spec(model)
            return resolve_display_spec(spec), qual, src
        warn(f'__str__ of {qual} changed; display falls back to python')
        return OrderedDict([('kind', 'python')]), qual, src
    for rx in _SIMPLE_STR:
        m = rx.match(src)
        if m:
            attr = m.group('attr')
            try:
                f = model._meta.get_field(attr)
                if f.concrete and not f.is_relation:
                    return T('{' + f.column + '}'), qual, src
            except Exception:
                pass
    warn(f'__str__ of {label_of(model)} ({qual}) is not expressible; using python')
    return OrderedDict([('kind', 'python')]), qual, src


# ---------------------------------------------------------------------------
# Model entries
# ---------------------------------------------------------------------------

EVENT_RULE_LABELS = set()


def describe(model):
    lbl = label_of(model)
    entry = OrderedDict()
    entry['table'] = model._meta.db_table
    entry['pk_column'] = model._meta.pk.column
    entry['api_path'] = api_path(model)
    entry['ui_path'] = ui_path(model)
    entry['event_rules'] = lbl in EVENT_RULE_LABELS

    disp, qual, src = display_spec(model)
    entry['display'] = disp
    entry['display_class'] = qual
    entry['display_source'] = src

    try:
        S = get_serializer_for_model(model)
    except Exception:
        S = None
    if S is None:
        # NetBox's private models (`_netbox_private`: the port mappings) have no REST API; they
        # are here for their rows (table, ordering, columns), rendered by their parent's field
        if not getattr(model, '_netbox_private', False):
            warn(f'no serializer for {lbl}')
        entry['serializer_class'] = None
        entry['serializer'] = []
        entry['brief'] = []
    else:
        entry['serializer_class'] = f'{S.__module__}.{S.__qualname__}'
        full = S(context={'request': None})
        entry['serializer'] = [classify(n, f, model, S) for n, f in readable_fields(full)]
        nested = S(nested=True, context={'request': None})
        entry['brief'] = [classify(n, f, model, S) for n, f in readable_fields(nested)
                          if not isinstance(f, RelatedObjectCountField)]
        get_display = getattr(S, 'get_display', None)
        if get_display is not None and get_display.__qualname__ != 'BaseModelSerializer.get_display':
            entry['serializer_display_override'] = source_of(get_display)

    override, default_impl = snapshot_override(model)
    snap = snapshot_spec(model)
    if override:
        entry['snapshot_override'] = override
        ov = SNAPSHOT_OVERRIDES.get(override)
        if ov is None:
            warn(f'unknown serialize_object override {override} on {lbl}')
            entry['snapshot_override_note'] = 'UNKNOWN override; see source'
        else:
            entry['snapshot_override_note'] = ov['description']
            snap = [s for s in snap if s['name'] not in ov['exclude']]
            snap = snap + [json.loads(json.dumps(a)) for a in ov['append']]
    entry['snapshot_serializer'] = default_impl or override
    from netbox.models.features import ChangeLoggingMixin
    entry['change_logging'] = issubclass(model, ChangeLoggingMixin)
    entry['snapshot'] = snap
    entry['ordering'] = ordering_spec(model)
    entry['columns'] = columns_spec(model)
    return entry


def main():
    translation.activate('en')
    from django.apps import apps

    event_models = []
    for ot in ObjectType.objects.with_feature('event_rules').order_by('app_label', 'model'):
        m = ot.model_class()
        if m is None:
            continue
        event_models.append(m)
        EVENT_RULE_LABELS.add(label_of(m))
    for m in event_models:
        CAT.want(m)

    while CAT.pending:
        m = CAT.pending.pop(0)
        CAT.entries[label_of(m)] = describe(m)

    # Attach variants
    for lbl, variants in CAT.variants.items():
        if lbl in CAT.entries:
            CAT.entries[lbl]['variants'] = OrderedDict(sorted(variants.items()))

    # Sanity: every nested reference resolves
    def walk(specs, where):
        for s in specs:
            if s.get('kind') in ('mapping_list', 'nested_plain'):
                walk(s['item_fields'], f'{where}.{s["name"]}')
                continue
            if s.get('kind') == 'related' and s.get('render', {}).get('kind') in ('mapping_list', 'nested_plain'):
                walk(s['render']['item_fields'], f'{where}.{s["name"]}')
                continue
            for key in ('model',):
                if s.get(key) and s[key] not in CAT.entries and s[key] != 'contenttypes.contenttype':
                    warn(f'{where}.{s["name"]}: {key} {s[key]} not in catalogue')
            for m in s.get('models', []) or []:
                if m not in CAT.entries:
                    warn(f'{where}.{s["name"]}: gfk target {m} not in catalogue')
            for sub in ('item_fields',):
                if sub in s:
                    walk(s[sub], f'{where}.{s["name"]}')
            if isinstance(s.get('render'), dict):
                walk([dict(s['render'], name=s['name'])], where)
    for lbl, e in CAT.entries.items():
        walk(e['serializer'], lbl)
        walk(e['brief'], lbl + '(brief)')
        for vk, vs in e.get('variants', {}).items():
            walk(vs, f'{lbl}<{vk}>')

    out = OrderedDict()
    out['netbox_version'] = getattr(settings, 'RELEASE', None) and settings.RELEASE.version or 'unknown'
    from netbox.config import PARAMS
    defaults = {p.name: p.default for p in PARAMS}
    out['settings'] = OrderedDict([
        ('note', 'values of the NetBox used to generate this file (defaults); a deployment may differ'),
        ('base_path', settings.BASE_PATH),
        ('media_url', settings.MEDIA_URL),
        ('time_zone', settings.TIME_ZONE),
        ('changelog_skip_empty_changes', settings.CHANGELOG_SKIP_EMPTY_CHANGES),
        ('prefer_ipv4_default', defaults.get('PREFER_IPV4')),
    ])
    out['models'] = OrderedDict(sorted(CAT.entries.items()))
    out['choices'] = OrderedDict(sorted(CHOICES.items()))
    json.dump(out, sys.stdout, indent=1, ensure_ascii=True, default=text)
    sys.stdout.write('\n')
    if WARNINGS:
        sys.stderr.write(f'{len(WARNINGS)} warning(s)\n')


if __name__ == '__main__':
    main()
